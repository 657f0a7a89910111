"""Network emulation: profiles as tc command lines, the namespace lab, the netem router VM."""
