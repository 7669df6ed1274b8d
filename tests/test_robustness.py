"""Robustness: bad CLI input, interrupted writes, numerical extremes of the generated modules, reproducibility.

1. Bad input to ``derive gen`` (run as a subprocess in an empty working directory): a non-zero exit code, a
   one-line ``derive: error: ...`` message that names the problem (click's own usage block is accepted for
   pure usage errors), never a traceback, and nothing written.
2. Interrupted writes (in-process, ``write_modules`` with ``os.replace`` / the file write failing): the
   previous files stay intact, no temporary files are left, and the next run recovers.
3. Numerical extremes of representative generated modules: fp16 / bf16 states, sigma from 1e4 to 1e-4 in 50
   and 1000 steps, repeated sigmas, pure-noise starts, the final step to 0, mixed dtypes, malformed model
   outputs (wrong shape, NaN).
4. Reproducibility: seeds, per-sample generators, regeneration across ``PYTHONHASHSEED`` values.
"""

from __future__ import annotations

import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from derive import files as write_mod
from derive.derivation import DERIVATION_WALL_LIMIT
from derive.emit.write import MANIFEST, content_hash, module_path, read_manifest, write_modules
from derive.errors import HandEditedError
from derive.spec import Spec
from derive.verify.problems import GaussianData, append_zero, karras_sigmas, log_uniform_sigmas

from .conftest import load_module

DERIVE = [sys.executable, "-m", "derive.cli"]
#: generous: a bad-input invocation takes ~3 s (imports); a hang is a bug, not a slow machine
CLI_TIMEOUT = 120


def run_cli(args, cwd, *, seed="0", timeout=CLI_TIMEOUT):
    env = {**os.environ, "PYTHONHASHSEED": seed}
    return subprocess.run(
        DERIVE + list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def tree(root: pathlib.Path) -> list[str]:
    """Every file and folder below ``root`` (relative paths, sorted)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def assert_one_line_error(result, keyword: str):
    """stderr is one ``derive: error:`` line naming the problem, or click's usage block for usage errors."""
    err = result.stderr
    assert "Traceback" not in err and "Traceback" not in result.stdout, err
    lines = err.strip().splitlines()
    assert lines, "no error message on stderr"
    if any(line.startswith(("Usage:", "Try '")) for line in lines):
        # a pure usage error in click's format: "Usage: ...", "Try ... --help", "", "Error: ..."
        assert result.returncode == 2, err
        error_lines = [line for line in lines if line.startswith("Error:")]
        assert len(error_lines) == 1, err
        message = error_lines[0]
    else:
        assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
        message = lines[0]
        assert message.startswith("derive: error: "), err
    assert keyword.lower() in message.lower(), f"{keyword!r} not named in: {message}"
    return message


# ------------------------------------------------------------------------------------------------------------
# 1. bad CLI input
# ------------------------------------------------------------------------------------------------------------

LONG_PHI = "+".join(["s"] * 400)  # 799 characters

#: id -> (arguments after ``gen``, expected exit code, keyword the message must contain)
BAD_INPUT = {
    "unknown_family": (["--family", "foo", "--order", "1"], 2, "--family"),
    "unknown_method": (["--order", "1", "--method", "rk4"], 2, "--method"),
    "unknown_prediction": (["--family", "vpsde", "--order", "1", "--prediction", "score"], 2, "--prediction"),
    "unknown_dynamics": (["--family", "vpsde", "--order", "1", "--dynamics", "langevin"], 2, "--dynamics"),
    "unknown_schedule": (
        ["--family", "vpsde", "--order", "1", "--dynamics", "ode", "--schedule", "foo"],
        2,
        "schedule",
    ),
    "order_0": (["--order", "0"], 2, "--order"),
    "order_negative": (["--order", "-1"], 2, "--order"),
    "order_fraction": (["--order", "2.5"], 2, "--order"),
    "order_text": (["--order", "x"], 2, "--order"),
    "order_above_max": (["--order", "9"], 2, "--order"),
    "phi_sqrt_inadmissible": (["--order", "1", "--phi", "sqrt(s)"], 2, "admissible"),
    "phi_decaying_inadmissible": (["--order", "1", "--phi", "s*exp(-s)"], 2, "admissible"),
    "phi_negative_inadmissible": (["--order", "1", "--phi", "-s"], 2, "positive"),
    "phi_unparseable_plus": (["--order", "1", "--phi", "s +"], 2, "parse"),
    "phi_unparseable_pow": (["--order", "1", "--phi", "s**"], 2, "parse"),
    "phi_singular": (["--order", "1", "--phi", "1/(s-1)"], 2, "singular"),
    "phi_singular_tan": (["--order", "1", "--phi", "s*tan(s)"], 2, "singular"),
    "phi_injection_import": (["--order", "1", "--phi", "__import__('os').system('x')"], 2, "not allowed"),
    "phi_injection_dunder_attr": (["--order", "1", "--phi", "s.__class__"], 2, "not allowed"),
    "phi_injection_lambda": (["--order", "1", "--phi", "(lambda: 1)()"], 2, "allowed"),
    "phi_injection_builtins": (["--order", "1", "--phi", "__builtins__"], 2, "not allowed"),
    "phi_injection_statement": (["--order", "1", "--phi", "s; import os"], 2, "parse"),
    "phi_empty": (["--order", "1", "--phi", ""], 2, "phi"),
    "phi_too_long": (["--order", "1", "--phi", LONG_PHI], 2, "too long"),
    "phi_exponent_too_large": (["--order", "1", "--phi", "s**1001"], 2, "exponent"),
    "phi_power_tower": (["--order", "1", "--phi", "9**9**9**9*s"], 2, "too large"),
    "phi_float_overflow": (["--order", "1", "--phi", "1e400*s"], 2, "overflow"),
    "phi_constant": (["--order", "1", "--phi", "pi"], 2, "constant"),
    "velocity_for_edm": (["--family", "edm", "--order", "1", "--prediction", "velocity"], 2, "velocity"),
    "velocity_for_ersde": (["--order", "1", "--prediction", "velocity"], 2, "prediction"),
    "dynamics_for_ersde": (["--order", "1", "--dynamics", "ode"], 2, "--dynamics"),
    "phi_with_ode_dynamics": (
        ["--family", "vpsde", "--order", "1", "--dynamics", "ode", "--phi", "s**2"],
        2,
        "--phi",
    ),
    "schedule_for_ersde": (["--order", "1", "--schedule", "linear"], 2, "--schedule"),
    "no_order_no_all": ([], 2, "--order"),
    "all_with_spec_options": (["--all", "--order", "3", "--phi", "sde"], 2, "--all"),
    "unknown_option": (["--order", "1", "--bogus"], 2, "--bogus"),
    "out_is_a_file": (["--order", "1", "--phi", "sde", "--out", "a_file"], 2, "a_file"),
    # the parent of --out is a file: mkdir fails with NotADirectoryError
    "out_below_a_file": (["--order", "1", "--phi", "sde", "--out", "a_file/sub"], 2, "a_file"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_cli_input(case, tmp_path):
    args, code, keyword = BAD_INPUT[case]
    (tmp_path / "a_file").write_text("not a folder\n")
    before = tree(tmp_path)
    result = run_cli(["gen", *args], tmp_path)
    codes = code if isinstance(code, tuple) else (code,)
    assert result.returncode in codes, f"exit {result.returncode}, expected {codes}\nstderr:\n{result.stderr}"
    assert_one_line_error(result, keyword)
    assert tree(tmp_path) == before, "bad input must not write anything"
    assert (tmp_path / "a_file").read_text() == "not a folder\n"


@pytest.mark.parametrize(
    "order,phi",
    [
        # admissible; coefficients.plan_coefficients -> _choose_quadrature raises ArithmeticError
        ("1", "s*exp(sqrt(s))"),
        # admissible in exact arithmetic (phi = s e^s overflows float64 above s ~ 709);
        # coefficients._plan_closed lambdifies a closed form containing exp_polar -> NameError
        ("2", "s*exp(s)"),
    ],
    ids=["exp_sqrt_order1", "exp_order2"],
)
def test_fast_growing_admissible_phi_never_tracebacks(order, phi, tmp_path):
    """phi passes check_phi, so the derivation runs. Whatever it concludes, the CLI must not crash: either a
    module that compiles (exit 0), or one line naming the problem (exit 2, or 3 for a failed derivation).
    Currently: a traceback and exit 1 (ArithmeticError / NameError escape the DeriveError handler)."""
    result = run_cli(["gen", "--order", order, "--phi", phi, "--out", "out"], tmp_path)
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.returncode in (0, 2, 3), result.stderr
    if result.returncode == 0:
        for path in (tmp_path / "out").glob("*.py"):
            compile(path.read_text(), str(path), "exec")
    else:
        assert_one_line_error(result, "phi")
        assert tree(tmp_path) == []


def test_check_against_empty_folder_reports_drift(tmp_path):
    """``derive gen --all --check --out <empty dir>``: exit 1, a unified diff on stdout, one error line, no
    writes."""
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli(["gen", "--all", "--check", "--out", str(empty)], tmp_path, timeout=600)
    assert result.returncode == 1, result.stderr
    assert_one_line_error(result, "differs")
    assert "--- " in result.stdout and "+++ " in result.stdout and "@@" in result.stdout
    assert f"{empty / MANIFEST} (derived now)" in result.stdout
    assert tree(tmp_path) == ["empty"]


def test_power_law_phi_derivation_terminates(tmp_path):
    """``--phi s**100`` passes the parser's bounds (exponents up to 1000 are allowed, "no input can make the
    parser hang"); the derivation must then finish or be refused in bounded time, not hang in SymPy.

    Without a limit, s**100 ran for more than 15 minutes (ersde.derive_step's simplification and
    closed_form_weight's sp.integrate). The derivation is bounded by DERIVATION_TIME_LIMIT of CPU time and
    DERIVATION_WALL_LIMIT of wall-clock time; the allowance here adds a minute for starting the process on a
    loaded machine."""
    allowance = DERIVATION_WALL_LIMIT + 60
    try:
        result = run_cli(
            ["gen", "--order", "1", "--phi", "s**100", "--out", "out"], tmp_path, timeout=allowance
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"derive gen --order 1 --phi 's**100' did not finish within {allowance:.0f} s")
    assert result.returncode in (0, 2), result.stderr
    assert "Traceback" not in result.stderr
    if result.returncode == 2:
        assert_one_line_error(result, "phi")
        assert tree(tmp_path) == []


def test_wall_clock_limit_bounds_a_derivation_that_uses_no_cpu(monkeypatch):
    """A derivation stalled without using CPU (a loaded machine, a blocking call) is stopped by the wall-clock
    bound; the CPU bound alone would never fire. The caller's own timer is restored afterwards."""
    import signal
    import time

    from derive import derivation
    from derive.errors import AdmissibilityError

    monkeypatch.setattr(derivation, "DERIVATION_WALL_LIMIT", 0.5)
    monkeypatch.setattr(derivation, "_derive", lambda spec: time.sleep(30))
    derivation.derive.cache_clear()
    fired = []
    previous = signal.signal(signal.SIGALRM, lambda *args: fired.append(True))
    signal.setitimer(signal.ITIMER_REAL, 5.0)
    started = time.monotonic()
    try:
        with pytest.raises(AdmissibilityError, match=r"wall-clock"):
            derivation.derive(Spec(family="ersde", order=1, phi="s**3"))
        assert time.monotonic() - started < 5
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 3 < remaining <= 5, "the caller's timer was not resumed"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        derivation.derive.cache_clear()
    assert not fired


def _regenerate_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith("# Regenerate with: ")]
    assert len(lines) == 1, "expected exactly one '# Regenerate with:' line"
    return lines[0].removeprefix("# Regenerate with: ")


@pytest.mark.parametrize(
    "phi",
    [
        pytest.param("s\n+s", id="newline"),  # a phi that parses (whitespace is allowed) but spans two lines
        pytest.param("s*(1+s)", id="parentheses"),  # shell metacharacters ( ) and *
    ],
)
def test_phi_text_is_quoted_in_generated_module(phi, tmp_path):
    """The phi text is interpolated into the module's ``# Regenerate with:`` comment. It must stay a single
    comment line (a newline in phi currently ends the comment: the next line is module code, so the module
    does not even compile) and be quoted so that the command can be pasted into a POSIX shell."""
    out = tmp_path / "out"
    result = run_cli(["gen", "--order", "1", "--phi", phi, "--out", str(out)], tmp_path)
    if "\n" in phi:  # refused up front: phi must be one printable line
        assert result.returncode == 2 and "control character" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        return
    assert result.returncode == 0, result.stderr
    (path,) = [p for p in out.iterdir() if p.suffix == ".py"]
    text = path.read_text()
    compile(text, str(path), "exec")  # the module must at least be valid Python
    command = _regenerate_line(text)
    # the command as a shell parses it, words separated by NUL
    shell = subprocess.run(
        ["sh", "-c", f"printf '%s\\0' {command}"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        check=False,
    )
    assert shell.returncode == 0, f"{command!r} is not valid shell syntax: {shell.stderr.strip()}"
    words = shell.stdout.split("\0")[:-1]
    assert words[words.index("--phi") + 1] == phi


# ------------------------------------------------------------------------------------------------------------
# 2. interrupted writes (in-process)
# ------------------------------------------------------------------------------------------------------------

SPEC_A = Spec("ersde", 1, "ode")
SPEC_B = Spec("ersde", 1, "sde")
OLD = {SPEC_A: "# generated by derive (old A)\nA = 1\n", SPEC_B: "# generated by derive (old B)\nB = 1\n"}
NEW = {SPEC_A: "# generated by derive (new A)\nA = 2\n", SPEC_B: "# generated by derive (new B)\nB = 2\n"}


def _snapshot(folder: pathlib.Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _temporaries(folder: pathlib.Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".tmp")


def _failing_replace(fail_when, exception):
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if fail_when(pathlib.Path(dst)):
            raise exception
        return real(src, dst, *args, **kwargs)

    return replace


@pytest.mark.parametrize(
    "exception", [OSError(28, "No space left on device"), KeyboardInterrupt()], ids=["oserror", "interrupt"]
)
def test_interrupted_rename_keeps_previous_files(tmp_path, monkeypatch, exception):
    out = tmp_path / "generated"
    write_modules(OLD, out)
    before = _snapshot(out)
    # the first module's rename fails: nothing may change
    monkeypatch.setattr(write_mod.os, "replace", _failing_replace(lambda dst: dst.suffix == ".py", exception))
    with pytest.raises(type(exception)):
        write_modules(NEW, out)
    assert _snapshot(out) == before
    assert _temporaries(out) == []


def test_failure_while_writing_keeps_previous_file(tmp_path, monkeypatch):
    """The disk fills up half-way through writing the temporary file."""
    out = tmp_path / "generated"
    write_modules(OLD, out)
    before = _snapshot(out)
    real_fdopen = os.fdopen

    class HalfWriter:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()
            return False

        def write(self, text):
            self.handle.write(text[: len(text) // 2])
            self.handle.flush()
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(write_mod.os, "fdopen", lambda *a, **k: HalfWriter(real_fdopen(*a, **k)))
    with pytest.raises(OSError, match="No space"):
        write_modules(NEW, out)
    assert _snapshot(out) == before
    assert _temporaries(out) == []


def test_interrupted_manifest_write_does_not_block_the_next_run(tmp_path, monkeypatch):
    """The modules were replaced but the manifest rename failed (crash between the two renames). Nothing is
    lost, no temporary file is left, and re-running the same command must succeed: the files on disk are
    exactly derive's own output. Currently the stale manifest hash makes the next run refuse with
    HandEditedError ("edited by hand ... use --force")."""
    out = tmp_path / "generated"
    write_modules(OLD, out)
    old_manifest = (out / MANIFEST).read_bytes()
    with monkeypatch.context() as patch:
        patch.setattr(
            write_mod.os,
            "replace",
            _failing_replace(lambda dst: dst.name == MANIFEST, OSError(5, "I/O error")),
        )
        with pytest.raises(OSError):
            write_modules(NEW, out)
    assert _temporaries(out) == []
    assert (out / MANIFEST).read_bytes() == old_manifest  # the manifest itself is intact (old)
    for spec, text in NEW.items():
        assert module_path(out, spec).read_text() in (OLD[spec], text)  # each file complete, old or new
    try:
        write_modules(NEW, out)
    except HandEditedError as exc:
        pytest.fail(f"re-running after an interrupted write refuses: {exc}")
    for spec, text in NEW.items():
        assert module_path(out, spec).read_text() == text
        assert read_manifest(out)[spec.name]["sha256"] == content_hash(text)


# ------------------------------------------------------------------------------------------------------------
# 3. numerical extremes of generated modules
# ------------------------------------------------------------------------------------------------------------

REPRESENTATIVE = [
    "ersde_order3",
    "ersde_order3_phi_ode",
    "ersde_order2_phi_sde",
    "vpsde_order3_ode",
    "flow_order2_ode",
    "edm_order3_sde",
]
ODE = {"ersde_order3_phi_ode", "vpsde_order3_ode", "flow_order2_ode"}
SDE = [name for name in REPRESENTATIVE if name not in ODE]

DATA = GaussianData([1.0, -2.0, 0.5, 3.0], [0.5, 1.0, 0.1, 2.0])
SMAX, SMIN = 1e4, 1e-4


@pytest.fixture(params=REPRESENTATIVE)
def module(request):
    return load_module(request.param)


def model_in_dtype(x, sigma):
    """The exact Gaussian denoiser, evaluated in float64 and returned in the state's dtype."""
    return DATA.denoiser_torch(x.double(), sigma.double()).to(x.dtype)


def start_state(batch=64, smax=SMAX, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.from_numpy(DATA.sample_np(batch, seed))
    return x0 + smax * torch.randn(batch, DATA.d, generator=gen, dtype=torch.float64)


#: max |x - x_64| / max |x_64| per state dtype, for every state of a 50-step run from 1e4 to 1e-4 (then 0).
#: Measured over all states: fp32 11.6 eps (1.4e-6, flow_order2_ode), fp16 2.0 eps (2.0e-3), bf16 1.5 eps
#: (1.2e-2; fp16 / bf16 states are carried in float32 between steps). Allowance: 25 eps (fp32), 6 eps (fp16, bf16).
STATE_TOL = {torch.float32: 3e-6, torch.float16: 6e-3, torch.bfloat16: 4.7e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_low_precision_states_over_the_full_range(module, dtype):
    sigmas = torch.from_numpy(append_zero(log_uniform_sigmas(50, SMIN, SMAX)))
    x64 = start_state(256)
    gen = torch.Generator().manual_seed(1)
    noises = [torch.randn(x64.shape, generator=gen, dtype=torch.float64) for _ in range(len(sigmas))]

    def run(dt):
        it = iter(noises)
        states = []
        out = module.sample(
            model_in_dtype,
            x64.to(dt),
            sigmas,
            noise_sampler=lambda s, t: next(it).to(dt),
            callback=lambda info: states.append(info["x"]),
        )
        return states + [out]

    reference = run(torch.float64)
    states = run(dtype)
    assert all(state.dtype == dtype for state in states)
    for i, (state, ref) in enumerate(zip(states, reference)):
        assert torch.isfinite(state).all(), f"non-finite state after {i} steps"
        rel = float((state.double() - ref).abs().max()) / float(ref.abs().max())
        assert rel < STATE_TOL[dtype], (
            f"state {i} (sigma {float(sigmas[min(i, len(sigmas) - 1)]):.3g}): {rel:.3g}"
        )


@pytest.mark.parametrize("steps", [50, 1000])
def test_sigma_from_1e4_to_1e_4(module, steps):
    """Finite throughout; the ODE modules land on the exact Gaussian flow (measured max errors, 50 / 1000
    steps: ersde ode 1.5e-2 / 1.7e-6, vpsde ode 5.0e-2 / 1.1e-5, flow ode 4.6e-2 / 1.0e-4); the SDE modules
    land on the data distribution N(m, v) (up to s_min = 1e-4)."""
    sigmas = torch.from_numpy(log_uniform_sigmas(steps, SMIN, SMAX))
    x = start_state(2000)
    infos = []
    out = module.sample(
        model_in_dtype, x, sigmas, generator=torch.Generator().manual_seed(2), callback=infos.append
    )
    assert len(infos) == steps
    assert all(torch.isfinite(info["x"]).all() and torch.isfinite(info["denoised"]).all() for info in infos)
    assert torch.isfinite(out).all()
    name = module.__name__.rsplit("generated_", 1)[-1]
    if name in ODE:
        exact = torch.from_numpy(DATA.exact_flow(x.numpy(), SMAX, SMIN))
        tol = 0.15 if steps == 50 else 1e-3
        err = float((out - exact).abs().max())
        assert err < tol, f"max error {err:.3g} against the exact flow"
    else:
        mean = torch.tensor(DATA.mean)
        var = torch.tensor(DATA.var)
        # 2000 samples: standard errors 2.2 % of sd (mean) and 3.2 % (variance)
        assert ((out.mean(0) - mean).abs() < 0.15 * var.sqrt()).all(), out.mean(0)
        assert ((out.var(0) / var - 1).abs() < 0.2).all(), out.var(0)


def _karras(n=12, smin=0.03, smax=80.0):
    return karras_sigmas(n, smin, smax).tolist()


REPEATS = {
    # diffusers' failure mode: the last sigma_min repeated before the final 0
    "final_sigma_min_repeated_then_zero": _karras() + [_karras()[-1], 0.0],
    "final_sigma_min_repeated": _karras() + [_karras()[-1]],
    "middle_repeat": _karras()[:6] + _karras()[5:],
    "triple_middle_repeat": _karras()[:6] + [_karras()[5]] * 2 + _karras()[5:] + [0.0],
    "repeat_at_start": _karras()[:1] + _karras() + [0.0],
    "every_sigma_twice": [v for v in _karras() for _ in range(2)] + [0.0],
    "only_repeats": [5.0, 5.0, 5.0],
}


@pytest.mark.parametrize("case", sorted(REPEATS))
def test_repeated_sigmas_are_finite_zero_length_steps(module, case):
    values = REPEATS[case]
    sigmas = torch.tensor(values, dtype=torch.float64)
    x = start_state(16, smax=values[0])
    infos = []
    out = module.sample(
        model_in_dtype, x, sigmas, generator=torch.Generator().manual_seed(0), callback=infos.append
    )
    states = [info["x"] for info in infos] + [out]
    assert all(torch.isfinite(state).all() for state in states)
    for i in range(len(values) - 1):
        if values[i] == values[i + 1]:
            assert torch.equal(states[i + 1], states[i]), f"zero-length step {i} moved x"
    ratios, stds, weights, _ = module.coefficient_table(sigmas)
    assert all(np.isfinite(ratios)) and all(np.isfinite(stds))
    assert all(np.isfinite(w).all() for w in weights)


@pytest.mark.parametrize("gap", ["next_float", "1e-8"])
def test_near_repeated_sigma_is_as_harmless_as_an_exact_repeat(module, gap):
    """A sigma followed by an almost equal one (the next float down, or 1e-8 relative below; e.g. a schedule
    rounded through float32 or built by two code paths) must behave like an exact repeat, which restarts the
    history. Currently the next step's multistep weights are ~ h^2 / delta (1e15 for the next float) and
    amplify the rounding error of P_i - P_{i-1} (ODE modules) and, worse, the O(sqrt(delta)) noise injected on
    the tiny step (SDE modules): measured max |difference| to the exact-repeat run, output scale ~3,
    next float / 1e-8: ersde_order3 3.5e5 / 37, ersde_order2_phi_sde 1.9e6 / 206, edm_order3_sde 2.9e6 / 309,
    ersde_order3_phi_ode 0.59 / < 0.1, vpsde_order3_ode 0.79 / < 0.1, flow_order2_ode 0.74 / < 0.1."""
    base = karras_sigmas(12, 0.03, 80.0).tolist()
    s = base[5]
    near = math.nextafter(s, 0.0) if gap == "next_float" else s * (1 - 1e-8)
    x = start_state(256, smax=80.0)

    def nearest(value):
        return min(range(len(base)), key=lambda j: abs(base[j] - float(value)))

    def noise(a, b):
        # the same noise for the same step in both runs (the near-repeat run has one extra, tiny step)
        seed = 100 * nearest(a) + nearest(b)
        return torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    def run(values):
        return module.sample(
            model_in_dtype, x, torch.tensor(values, dtype=torch.float64), noise_sampler=noise
        )

    repeat = run(base[:6] + [s] + base[6:] + [0.0])
    nearly = run(base[:6] + [near] + base[6:] + [0.0])
    assert torch.isfinite(nearly).all()
    difference = float((nearly - repeat).abs().max())
    # an exact repeat itself changes the result by 0.013-0.054 against no repeat at all (lower-order restart)
    assert difference < 0.1, f"max |near repeat - exact repeat| = {difference:.3g}"


#: two distinct sigmas one float apart whose offsets from a later sigma round to the same float:
#: 3.955076722920577 - 1.3668379411737963 == nextafter(3.955076722920577, 0) - 1.3668379411737963
ULP_PAIR = [3.955076722920577, math.nextafter(3.955076722920577, 0.0), 1.3668379411737963, 1.0]


@pytest.mark.parametrize("with_zero", [False, True], ids=["to_1", "to_0"])
def test_sigmas_one_float_apart_do_not_crash(module, with_zero):
    """A strictly decreasing (hence valid) schedule with two sigmas 1 ulp apart: the interpolation offsets
    delta_j = s_(i-j) - s_i of two history points round to the same float, and every module of order >= 3
    divides by their difference in _derivative_weights_3 (d3 = 1 / (delta1 - delta2)): ZeroDivisionError
    from coefficient_table() (found by tests/test_fuzz.py). Order-2 SDE modules do not crash but blow up
    (|x| ~ 4e7 for ersde_order2_phi_sde: the multistep weights after a 1-ulp step are ~ 1e15, see
    test_near_repeated_sigma_is_as_harmless_as_an_exact_repeat)."""
    values = ULP_PAIR + ([0.0] if with_zero else [])
    sigmas = torch.tensor(values, dtype=torch.float64)
    ratios, stds, weights, _ = module.coefficient_table(sigmas)
    assert all(math.isfinite(v) for v in ratios + stds)
    assert all(math.isfinite(v) for row in weights for v in row)
    out = module.sample(
        model_in_dtype, start_state(8, smax=4.0), sigmas, generator=torch.Generator().manual_seed(0)
    )
    assert torch.isfinite(out).all()
    assert float(out.abs().max()) < 100


def test_first_step_from_pure_noise(module):
    """x = 1e4 * noise (no data), one huge step to 1e-2, to 0, and two steps to 1e-4."""
    x = SMAX * torch.randn(32, DATA.d, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    gen = torch.Generator().manual_seed(4)
    for values in ([SMAX, 1e-2], [SMAX, 0.0], [SMAX, 1.0, SMIN], [SMAX, SMAX / 2, 0.0]):
        out = module.sample(model_in_dtype, x, torch.tensor(values, dtype=torch.float64), generator=gen)
        assert torch.isfinite(out).all(), values
        # every step is a contraction towards the data: the result is O(data), not O(1e4)
        assert float(out.abs().max()) < 100, (values, float(out.abs().max()))
    # a single step to 0 returns the model's prediction at sigma_max
    out = module.sample(model_in_dtype, x, torch.tensor([SMAX, 0.0], dtype=torch.float64))
    assert torch.equal(out, model_in_dtype(x, torch.full((32,), SMAX, dtype=torch.float64)))


def test_last_step_to_zero_returns_the_prediction(module):
    sigmas = torch.from_numpy(append_zero(log_uniform_sigmas(20, SMIN, SMAX)))
    infos = []
    out = module.sample(
        model_in_dtype,
        start_state(8),
        sigmas,
        generator=torch.Generator().manual_seed(5),
        callback=infos.append,
    )
    last = infos[-1]
    assert float(last["sigma"]) == SMIN
    assert torch.equal(out, last["denoised"])
    assert torch.equal(out, model_in_dtype(last["x"], torch.full((8,), SMIN, dtype=torch.float64)))


@pytest.mark.parametrize(
    "sigma_dtype,x_dtype",
    [(torch.float32, torch.float64), (torch.float64, torch.float32), (torch.float16, torch.float32)],
    ids=["sigmas32_x64", "sigmas64_x32", "sigmas16_x32"],
)
def test_sigmas_and_state_in_different_dtypes(module, sigma_dtype, x_dtype):
    sigmas = torch.from_numpy(append_zero(karras_sigmas(15, 0.03, 80.0))).to(sigma_dtype)
    x = start_state(16, smax=80.0)
    gen = torch.Generator().manual_seed(6)
    noises = [torch.randn(x.shape, generator=gen, dtype=torch.float64) for _ in range(len(sigmas))]

    def run(xd, sigmas):
        it = iter(noises)
        return module.sample(model_in_dtype, x.to(xd), sigmas, noise_sampler=lambda s, t: next(it).to(xd))

    out = run(x_dtype, sigmas)
    assert out.dtype == x_dtype and out.shape == x.shape
    assert torch.isfinite(out).all()
    # the same schedule values (as rounded to sigma_dtype) with everything in float64
    reference = run(torch.float64, sigmas.double())
    rel = float((out.double() - reference).abs().max()) / float(reference.abs().max())
    assert rel < 20 * torch.finfo(x_dtype).eps, rel


class ShapeLeak(Exception):
    """The sampler fed a state of the wrong shape back into the model (it accepted a bad model output)."""


WRONG_SHAPES = {
    "first_row_only": lambda d: d[:1],  # (1, D): broadcasts silently over the batch
    "one_vector": lambda d: d[0],  # (D,): broadcasts silently
    "scalar": lambda d: d.mean(),  # (): broadcasts silently
    "extra_dim": lambda d: d[:, None],  # (B, 1, D): the state grows a dimension every step (then OOM)
    "extra_column": lambda d: torch.cat([d, d[:, :1]], 1),  # (B, D + 1): torch's broadcasting error
    "transposed": lambda d: d.T,  # (D, B)
}


@pytest.mark.parametrize(
    "case,final_zero",
    [(case, False) for case in sorted(WRONG_SHAPES)] + [("first_row_only", True)],
    ids=[f"{case}-to_smin" for case in sorted(WRONG_SHAPES)] + ["first_row_only-to_zero"],
)
def test_model_returning_wrong_shape_raises_clear_error(case, final_zero):
    """A model output whose shape differs from x must be rejected with an error that says so (it names the
    shape), before it is folded into the state; it must not broadcast silently (wrong samples), grow the
    state (memory blow-up) or be returned as the result of a final step to 0. (The sampling loop ``_run`` is
    shared by all modules, so one module stands for all.)"""
    module = load_module("ersde_order3")
    x = start_state(6, smax=80.0)
    shape = x.shape
    wrong = WRONG_SHAPES[case]

    def model(y, sigma):
        if y.shape != shape:
            raise ShapeLeak(
                f"the sampler accepted a bad output and now passes a state of shape {tuple(y.shape)}"
            )
        return wrong(model_in_dtype(y, sigma))

    values = karras_sigmas(4, 0.1, 80.0)
    sigmas = torch.from_numpy(append_zero(values) if final_zero else values)
    with pytest.raises((ValueError, RuntimeError), match="(?i)shape") as info:
        module.sample(model, x, sigmas, generator=torch.Generator().manual_seed(0))
    assert not isinstance(info.value, ShapeLeak)


def test_model_returning_nan_propagates(module):
    """By default a NaN from the model propagates element-wise into the output (no per-step synchronisation)
    and the other samples are untouched."""
    sigmas = torch.from_numpy(append_zero(karras_sigmas(10, 0.03, 80.0)))
    calls = []

    def model(x, sigma):
        calls.append(float(sigma[0]))
        out = model_in_dtype(x, sigma)
        if len(calls) == 4:
            out[0, 0] = float("nan")
        return out

    out = module.sample(model, start_state(6, smax=80.0), sigmas, generator=torch.Generator().manual_seed(0))
    assert len(calls) == len(sigmas) - 1, "sampling continues after the NaN"
    assert torch.isnan(out[0, 0])
    assert torch.isfinite(out[1:]).all(), "other samples are not contaminated"
    everything = module.sample(
        lambda x, s: torch.full_like(x, float("nan")),
        start_state(6, smax=80.0),
        sigmas,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.isnan(everything).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_check_finite_reports_step_and_sigma(module, bad):
    """``check_finite=True``: the first non-finite model output stops sampling with a ValueError that names
    the step and its sigma; no later model call is made."""
    sigmas = torch.from_numpy(append_zero(karras_sigmas(10, 0.03, 80.0)))
    calls = []

    def model(x, sigma):
        calls.append(float(sigma[0]))
        out = model_in_dtype(x, sigma)
        if len(calls) == 4:
            out[2, 1] = bad
        return out

    with pytest.raises(ValueError, match=r"NaN or Inf at step 3 \(sigma = ") as info:
        module.sample(
            model,
            start_state(6, smax=80.0),
            sigmas,
            generator=torch.Generator().manual_seed(0),
            check_finite=True,
        )
    assert f"{float(sigmas[3]):.6g}" in str(info.value)
    assert len(calls) == 4
    # a finite run is unchanged by the check
    a = module.sample(
        model_in_dtype, start_state(6, smax=80.0), sigmas, generator=torch.Generator().manual_seed(0)
    )
    b = module.sample(
        model_in_dtype,
        start_state(6, smax=80.0),
        sigmas,
        generator=torch.Generator().manual_seed(0),
        check_finite=True,
    )
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------------------
# 4. reproducibility
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SDE)
def test_same_seed_is_bitwise_identical(name):
    module = load_module(name)
    sigmas = torch.from_numpy(append_zero(log_uniform_sigmas(30, SMIN, SMAX)))
    x = start_state(16)

    def run(seed):
        return module.sample(model_in_dtype, x.clone(), sigmas, generator=torch.Generator().manual_seed(seed))

    a, b, other = run(11), run(11), run(12)
    assert torch.equal(a, b)
    assert not torch.equal(a, other)
    # the default generator path (torch's global RNG) is reproducible with torch.manual_seed too
    torch.manual_seed(5)
    c = module.sample(model_in_dtype, x.clone(), sigmas)
    torch.manual_seed(5)
    d = module.sample(model_in_dtype, x.clone(), sigmas)
    assert torch.equal(c, d)


@pytest.mark.parametrize("name", SDE)
def test_per_sample_generators(name):
    """Sample b of a batch run with generators[b] equals a batch-of-one run with generator b."""
    module = load_module(name)
    sigmas = torch.from_numpy(append_zero(karras_sigmas(20, 0.01, 1000.0)))
    x = start_state(5, smax=1000.0)
    batched = module.sample(
        model_in_dtype, x, sigmas, generator=[torch.Generator().manual_seed(50 + b) for b in range(5)]
    )
    for b in range(5):
        single = module.sample(
            model_in_dtype, x[b : b + 1], sigmas, generator=torch.Generator().manual_seed(50 + b)
        )
        assert torch.equal(batched[b : b + 1], single), f"item {b}"


REGEN_SPECS = {
    "vpsde_order2_ode_cosine": [
        "--family",
        "vpsde",
        "--order",
        "2",
        "--dynamics",
        "ode",
        "--schedule",
        "cosine",
    ],
    "ersde_order2_power_phi": ["--family", "ersde", "--order", "2", "--phi", "s**1.5"],
}


@pytest.mark.parametrize("case", sorted(REGEN_SPECS))
def test_regeneration_is_byte_identical_across_hash_seeds(case, tmp_path):
    outputs = {}
    for seed in ("0", "12345"):
        out = tmp_path / f"seed{seed}"
        result = run_cli(["gen", *REGEN_SPECS[case], "--out", str(out)], tmp_path, seed=seed)
        assert result.returncode == 0, result.stderr
        outputs[seed] = _snapshot(out)
    assert sorted(outputs["0"]) == sorted(outputs["12345"])
    assert len(outputs["0"]) == 2  # the module and the manifest
    for name, data in outputs["0"].items():
        assert outputs["12345"][name] == data, f"{name} differs between PYTHONHASHSEED=0 and 12345"
