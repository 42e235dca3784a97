import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from gmlib.book.diagram import coupling_set  # noqa: E402
from gmlib.graph import ChannelGroup  # noqa: E402


def test_the_drawing_names_every_member_and_the_constraints():
    group = ChannelGroup(size=256, producers=["layer1.0.conv3", "layer1.0.downsample.0", "layer1.1.conv3"],
                         consumers=["layer1.1.conv1", "layer2.0.conv1"], groups=32)
    ax = coupling_set(group)
    texts = [t.get_text() for t in ax.texts]
    assert set(group.producers + group.consumers) <= set(texts)
    assert any("256 channels" in t and "groups=32" in t for t in texts)
    assert len([c for c in ax.get_children() if isinstance(c, matplotlib.text.Annotation)]) == 5  # one per arrow
    plt.close(ax.figure)


def test_a_set_without_producers_is_refused():
    with pytest.raises(ValueError, match="no producers"):
        coupling_set(ChannelGroup(size=3, producers=[], consumers=["conv1"]))
