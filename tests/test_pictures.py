"""Pictures a person opens: the branch graph as SVG/PNG, and training curves that show short runs."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

import splicer
from splicer.emission.graph import branch_graph
from splicer.emission.picture import draw_branch_graph, write_result_pictures
from splicer.errors import SplicerError
from splicer.spec.loader import spec_from_dict
from splicer.training.plots import curves_figure
from tests.conftest import REPO, toy_spec

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def toy_result():
    return splicer.compile_spec(spec_from_dict(toy_spec()))


def test_svg_has_one_node_per_block_transform_and_branch_block(toy_result, tmp_path):
    svg, png = tmp_path / "graph.svg", tmp_path / "graph.png"
    write_result_pictures(toy_result, [svg, png])
    root = ET.parse(svg).getroot()  # valid XML, or this raises
    ids = [element.get("id", "") for element in root.iter()]
    nodes = {i.removeprefix("node-") for i in ids if i.startswith("node-")}
    n = len(toy_result.teacher.block_ends)  # 3 blocks -> 2 branches
    teacher = {f"T_B{k}" for k in range(1, n + 1)}
    transforms = {f"R{i}_T" for i in range(1, n)}
    branch_blocks = {f"R{i}_B{k}" for i in range(1, n) for k in range(i + 1, n + 1)}
    heads = {"T_head"} | {f"R{i}_head" for i in range(1, n)}
    assert nodes == teacher | transforms | branch_blocks | heads | {"input"}
    assert len([i for i in ids if i.startswith("node-")]) == len(nodes)  # each drawn once
    assert (len(teacher), len(transforms), len(branch_blocks)) == (3, 2, 3)
    graph = branch_graph(toy_result)
    assert sum(i.startswith("edge-") for i in ids) == graph.number_of_edges()
    texts = {"".join(t.itertext()).strip() for t in root.iter(f"{SVG}text")}
    assert {data["shape"] for _, _, data in graph.edges(data=True)} <= texts  # shapes on the edges
    assert any(t.endswith("params") for t in texts)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    write_result_pictures(toy_result, [tmp_path / "again.svg"])
    assert (tmp_path / "again.svg").read_bytes() == svg.read_bytes()  # no date or random id: rebuilds are identical


def label_overflows(graph) -> list[str]:
    """Labels whose drawn extent leaves their box, and branch names that run into a box, by matplotlib's renderer."""
    import matplotlib.pyplot as plt

    fig = draw_branch_graph(graph, "title")
    try:
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        boxes = {
            p.get_gid().removeprefix("node-"): p.get_window_extent(renderer)
            for p in ax.patches
            if (p.get_gid() or "").startswith("node-")
        }
        problems, labelled = [], set()
        for text in ax.texts:
            gid, extent = text.get_gid() or "", text.get_window_extent(renderer)
            if gid.startswith("label-"):
                labelled.add(gid.removeprefix("label-"))
                box = boxes[gid.removeprefix("label-")]
                if extent.x0 < box.x0 or extent.x1 > box.x1 or extent.y0 < box.y0 or extent.y1 > box.y1:
                    problems.append(f"{text.get_text()!r} leaves box {gid}")
            elif gid.startswith("branch-"):
                problems += [f"{text.get_text()!r} runs into {node}" for node, box in boxes.items() if extent.overlaps(box)]
        assert labelled == set(boxes) == set(graph.nodes)  # every box's labels were measured
        return problems
    finally:
        plt.close(fig)


def test_every_label_fits_its_box_even_a_long_one(toy_result):
    graph = branch_graph(toy_result)
    assert label_overflows(graph) == []
    graph.nodes["T_B1"]["end"] = "features.denseblock4.denselayer24.conv2.very_long_suffix_name"  # cut, shrunk to fit
    graph.nodes["R1_T"]["end"] = "8x8 transposed conv stride 4"
    assert label_overflows(graph) == []


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(path.stem for path in (REPO / "specs").glob("*.yaml")))
def test_labels_fit_for_the_shipped_specs(name):
    """Every shipped spec, vit_small_resnet18's "8x8 transposed conv stride 4" (which once ran into "branch 1")
    included: 17 s for all of them on an idle core."""
    result = splicer.compile_spec(REPO / "specs" / f"{name}.yaml", verify=False)
    assert label_overflows(branch_graph(result)) == []


def test_picture_format_comes_from_the_extension(toy_result, tmp_path):
    with pytest.raises(SplicerError, match=r"\.pdf.*use \.svg or \.png"):
        write_result_pictures(toy_result, [tmp_path / "graph.pdf"])
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


def _record(epoch: int) -> dict:
    return {
        "epoch": epoch, "loss": 2.0 / epoch, "terms": {"teacher_ce": 1.0, "branch_kl": 0.5},
        "train_acc": 10.0 * epoch, "eval_top1": 12.0 * epoch, "eval_top5": 40.0 + epoch,
    }


@pytest.mark.parametrize("epochs", [1, 3])
def test_short_runs_draw_a_marker_at_every_point(epochs):
    import matplotlib.pyplot as plt

    fig = curves_figure([_record(e) for e in range(1, epochs + 1)], "toy", kl_term="branch_kl")
    try:
        lines = [line for ax in fig.axes for line in ax.get_lines()]
        assert len(lines) == 7  # total + 2 terms, the KL term, train + eval top-1 + eval top-5
        for line in lines:
            assert len(line.get_xdata()) == epochs
            assert line.get_marker() not in (None, "", " ", "None") and line.get_markersize() >= 3, line.get_label()
        for ax in fig.axes:
            low, high = ax.get_xlim()
            assert low < 1 and high > epochs and all(float(tick).is_integer() for tick in ax.get_xticks())
    finally:
        plt.close(fig)


def test_long_runs_are_drawn_as_lines():
    import matplotlib.pyplot as plt

    fig = curves_figure([_record(e) for e in range(1, 101)], "toy", kl_term=None)
    try:
        assert all(line.get_marker() in ("None", None, "") for ax in fig.axes for line in ax.get_lines())
    finally:
        plt.close(fig)
