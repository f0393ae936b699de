"""The accuracy-against-bytes figure reads finished runs' retention.json."""

import json

import pytest

from impress_lightning.tools.plot_runs import main


def write_run(folder, final_row, kinds, stored):
    folder.mkdir(parents=True)
    tasks = [{"task": t, "kind": k, "stored_bytes": b} for t, (k, b) in enumerate(zip(kinds, stored))]
    (folder / "retention.json").write_text(json.dumps({"accuracy_matrix": [final_row], "tasks": tasks}))


def test_points_are_the_mean_final_accuracy_and_the_summed_bytes(tmp_path, capsys):
    write_run(tmp_path / "supsup", [0.9, 0.8, 0.7], ["impression"] * 3, [100, 100, 100])
    write_run(tmp_path / "ours", [0.9, 0.6, 0.3], ["impression", "combination", "combination"], [100, 8, 8])
    points = main([str(tmp_path / "supsup"), str(tmp_path / "ours"), "--output", str(tmp_path / "fig.png")])
    assert points[0]["mean_accuracy"] == pytest.approx(0.8) and points[0]["stored_bytes"] == 300
    assert points[1]["impressions"] == 1 and points[1]["combination_mean"] == pytest.approx(0.45)
    assert points[1]["stored_bytes"] == 116
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| ours | 3 | 1 | 0.6000 | 0.4500 | 116 |" in capsys.readouterr().out


def test_a_folder_without_results_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="holds no retention.json"):
        main([str(tmp_path), "--output", str(tmp_path / "fig.png")])
