"""The label console's frame memory: which frames stay showable for suggestions."""

from ldka_ros.nodes.label_console_node import FrameMemory
from sensor_msgs.msg import Image


def _frame(stamp_ns: int) -> Image:
    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    msg.header.frame_id = 'camera_optical'
    return msg


def test_a_suggestion_that_arrives_before_its_frame_keeps_the_frame():
    """
    Under load the learner's suggestion can overtake the console's own camera callback.

    The frame used to be pinned only if it was already in the ring when the suggestion
    came, so it fell out of the ring later and the best suggestion was not showable.
    """
    memory = FrameMemory(capacity=3)
    early = 5_000_000_000
    memory.pin([early])
    memory.add_frame(_frame(early))
    for k in range(1, 6):  # the ring moves on past the suggested frame
        memory.add_frame(_frame(early + k * 100_000_000))
    assert early not in memory.frames
    assert memory.frame(early) is not None
    # A new suggestion list without it releases it; frames still in the ring stay found.
    newest = early + 5 * 100_000_000
    memory.pin([newest])
    assert memory.frame(early) is None
    assert memory.frame(newest) is not None and set(memory.pinned) == {newest}
