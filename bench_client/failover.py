"""Client-side fixes that make petals 2.2.0 fail over to a replica when a server dies mid-run.
Call ``apply()`` in client processes, after ``compat.apply()``. tests/test_faults.py kills a real
server mid-sweep and fails without these.

1. A server that dies mid-generate() cannot be replaced (petals 2.2.0 and its main branch): the
   replacement session inherits the failed one's input history but starts at position 0, so its
   first step fails with "AssertionError: Broken input cache" and the client gives up although a
   replica holds the blocks. We carry the position over, and return only the outputs of the
   current tokens (the replacement sends the whole history; the next span expects the new tokens).
2. After a server fails, petals bans it but keeps routing through it: the ban only drops it from
   ``block_infos``, while routes are built from ``spans_containing_block``, refreshed every
   ``update_period`` (60 s); a server that cannot even be dialled is not banned at all. Every retry
   then goes to the dead server. We refresh the routes after each failure and ban a server whose
   session cannot be opened.

Remove both when petals' failover works against a killed server (run tests/test_faults.py).
"""

from __future__ import annotations

_applied = False


def _recover_server_sessions() -> None:
    from petals.client.inference_session import InferenceSession, _ServerInferenceSession

    original_update = InferenceSession._update_sequence

    def _update_sequence(self, server_idx: int, block_idx: int, attempt_no: int):
        failed = self._server_sessions[server_idx] if server_idx < len(self._server_sessions) else None
        result = original_update(self, server_idx, block_idx, attempt_no)
        if failed is not None and self._server_sessions[server_idx] is not failed:
            self._server_sessions[server_idx]._position = failed._position  # tokens the span had processed
        return result

    original_step = _ServerInferenceSession.step

    def step(self, inputs, *args, **kwargs):
        outputs = original_step(self, inputs, *args, **kwargs)
        return outputs[:, -inputs.shape[1]:]  # a replacement's first step returns the whole history

    InferenceSession._update_sequence = _update_sequence
    _ServerInferenceSession.step = step


def _route_around_failed_servers() -> None:
    from petals.client.inference_session import InferenceSession
    from petals.client.routing.sequence_manager import RemoteSequenceManager

    original_failure = RemoteSequenceManager.on_request_failure

    def on_request_failure(self, peer_id) -> None:
        original_failure(self, peer_id)
        if peer_id is not None:
            self.update(wait=False)  # the next route waits for a refresh that leaves the banned server out

    original_enter = InferenceSession._enter_server_sessions

    def _enter_server_sessions(self, chosen_spans):
        sessions = []
        for span in chosen_spans:  # one at a time, to know which server could not be reached
            try:
                sessions += original_enter(self, [span])
            except Exception:
                self._exit_server_sessions(sessions)
                self._sequence_manager.on_request_failure(span.peer_id)
                raise
        return sessions

    RemoteSequenceManager.on_request_failure = on_request_failure
    InferenceSession._enter_server_sessions = _enter_server_sessions


def apply() -> None:
    """Patch petals' client classes once per process."""
    global _applied
    if _applied:
        return
    _recover_server_sessions()
    _route_around_failed_servers()
    _applied = True
