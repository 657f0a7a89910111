"""Ansible's side: the experiment plan checked before any host changes, the ansible-runner wrapper."""
