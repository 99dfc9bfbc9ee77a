"""End-to-end tests of `idopt solve` through idopt.cli.main."""

import json

import numpy as np
import pytest

from idopt.cli import main
from idopt.first_order import solve_first_order
from idopt.problem import WeightingProblem
from idopt.solve import solve


@pytest.fixture
def arrays(tmp_path):
    rng = np.random.default_rng(0)
    n, r = 20, 3
    values = {"p": rng.normal(size=n), "P2": rng.normal(size=(n, 2)), "A": rng.normal(size=(r, n))}
    root = rng.normal(size=(r, r))
    values["H"] = root @ root.T
    paths = {}
    for name, value in values.items():
        paths[name] = tmp_path / f"{name}.npy"
        np.save(paths[name], value)
    return values, paths


def run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_outputs(folder):
    return np.load(folder / "weights.npy"), json.loads((folder / "report.json").read_text())


def test_first_order_end_to_end(arrays, tmp_path, capsys):
    values, paths = arrays
    out = tmp_path / "out"
    code, stdout, _ = run(["solve", "--p", str(paths["p"]), "--lam", "0.4", "--budget", "5", "-o", str(out)], capsys)
    assert code == 0
    weights, report = read_outputs(out)
    reference = solve_first_order(values["p"], 0.4, 5.0)
    np.testing.assert_array_equal(weights, reference.w)
    entry = report["targets"][0]
    assert entry["status"] == "optimal"
    assert entry["support_size"] == reference.support_size
    assert entry["lam"] == 0.4
    assert entry["objective"] == pytest.approx(reference.objective)
    assert entry["kkt"]["max_residual"] < 1e-9
    assert entry["wall_time_s"] >= 0
    assert entry["method"].startswith("projection:")
    assert "Wrote" in stdout


def test_factored_osqp_end_to_end(arrays, tmp_path, capsys):
    values, paths = arrays
    out = tmp_path / "out"
    argv = ["solve", "--p", str(paths["P2"]), "--A", str(paths["A"]), "--H", str(paths["H"]), "--eta", "3",
            "--lam", "0.2", "--method", "osqp", "-o", str(out)]
    assert run(argv, capsys)[0] == 0
    weights, report = read_outputs(out)
    problem = WeightingProblem.create(values["P2"], 0.2, eta=3.0, A=values["A"], H=values["H"])
    expected = np.column_stack([solution.w for solution in solve(problem, "osqp")])
    assert weights.shape == (20, 2)
    np.testing.assert_allclose(weights, expected, rtol=0, atol=1e-12)
    assert [entry["target"] for entry in report["targets"]] == [0, 1]
    assert all(entry["method"].startswith("osqp") for entry in report["targets"])


def test_k_gives_k_nonzeros(arrays, tmp_path, capsys):
    _, paths = arrays
    out = tmp_path / "out"
    argv = ["solve", "--p", str(paths["P2"]), "--A", str(paths["A"]), "--eta", "2", "--k", "6", "--target", "1",
            "-o", str(out)]
    assert run(argv, capsys)[0] == 0
    weights, report = read_outputs(out)
    assert weights.shape == (20,)
    assert np.count_nonzero(weights) == 6
    assert report["targets"][0]["exact"] is True
    assert report["targets"][0]["k"] == 6


def error_line(argv, capsys):
    code, _, stderr = run(argv, capsys)
    assert code == 2
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1
    return lines[0]


def test_missing_file(tmp_path, capsys):
    line = error_line(["solve", "--p", str(tmp_path / "nope.npy"), "--lam", "1", "-o", str(tmp_path)], capsys)
    assert "--p" in line
    assert "not found" in line


def test_object_array(tmp_path, capsys):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([1.0, "a"], dtype=object), allow_pickle=True)
    line = error_line(["solve", "--p", str(path), "--lam", "1", "-o", str(tmp_path)], capsys)
    assert "--p" in line
    assert "allow_pickle" in line


def test_shape_mismatch(arrays, tmp_path, capsys):
    _, paths = arrays
    argv = ["solve", "--p", str(paths["p"]), "--Q", str(paths["A"]), "--eta", "1", "--lam", "1", "-o", str(tmp_path)]
    line = error_line(argv, capsys)
    assert "Q must have shape (n, n) = (20, 20)" in line


def test_q_without_eta(arrays, tmp_path, capsys):
    _, paths = arrays
    line = error_line(["solve", "--p", str(paths["p"]), "--A", str(paths["A"]), "--lam", "1", "-o", str(tmp_path)], capsys)
    assert "--eta" in line


def test_h_without_a(arrays, tmp_path, capsys):
    _, paths = arrays
    line = error_line(["solve", "--p", str(paths["p"]), "--H", str(paths["H"]), "--lam", "1", "-o", str(tmp_path)], capsys)
    assert "--H" in line


def test_target_out_of_range(arrays, tmp_path, capsys):
    _, paths = arrays
    line = error_line(["solve", "--p", str(paths["P2"]), "--lam", "1", "--target", "5", "-o", str(tmp_path)], capsys)
    assert "target" in line


def test_lam_and_k_exclusive(arrays, tmp_path, capsys):
    _, paths = arrays
    with pytest.raises(SystemExit) as caught:
        main(["solve", "--p", str(paths["p"]), "--lam", "1", "--k", "3", "-o", str(tmp_path)])
    assert caught.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_lam_or_k_required(arrays, tmp_path, capsys):
    _, paths = arrays
    with pytest.raises(SystemExit) as caught:
        main(["solve", "--p", str(paths["p"]), "-o", str(tmp_path)])
    assert caught.value.code == 2
