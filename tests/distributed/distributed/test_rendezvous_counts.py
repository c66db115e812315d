"""``rendezvous_check`` numbers each tag's uses per process group, so a tag can be reused
(the checkpoint handshake reuses one per operation): real ranks, gloo over loopback."""

import pytest

import distengine.distributed as idist
from distengine.checkpoint import CheckpointCollectiveError, handshake

pytestmark = pytest.mark.timeout(90)


def _reuse(local_rank: int) -> list[str]:
    r = idist.get_rank()
    seen = []
    for _ in range(3):  # the same tag, three times on every rank: three meetings
        idist.rendezvous_check("test/again", timeout=30)
        handshake("save", timeout=30)
    seen.append("met 3 times")
    # rank 0 comes once more than rank 1: its 4th "test/again" meets nobody
    if r == 0:
        with pytest.raises(TimeoutError, match=r"reached 'test/again#4'.*rank 1 is at 'after'"):
            idist.rendezvous_check("test/again", timeout=2)
        seen.append("4th alone timed out")
    else:
        with pytest.raises(TimeoutError, match=r"reached 'after'.*rank 0 is at 'test/again#4'"):
            idist.rendezvous_check("after", timeout=1)
    idist.barrier()
    # the checkpoint handshake: one rank at its 4th save, the other at a look-up
    op = "save" if r == 0 else "latest"
    with pytest.raises(CheckpointCollectiveError, match="call '(save|latest)' on every rank"):
        handshake(op, timeout=1)
    seen.append("mismatched operations refused")
    idist.barrier()
    return seen


def test_a_tag_can_be_reused_and_each_use_is_checked():
    results = idist.spawn(_reuse, 2)
    assert results[0] == ["met 3 times", "4th alone timed out", "mismatched operations refused"]
    assert results[1] == ["met 3 times", "mismatched operations refused"]
