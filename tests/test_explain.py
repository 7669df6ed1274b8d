"""``derive explain`` and the documentation site.

* the command works for every family and dynamics of the catalogue, in all three formats;
* its checks run every time (a check made to fail shows as FAILED, exit code 3), and the special cases are
  checked statements;
* the walk-through is built from the same derivation the emitter uses;
* the generated docs pages equal ``render_docs()`` (drift check, like the generated modules);
* the tutorial's commands and code run; ``mkdocs build --strict`` succeeds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap

import pytest
import sympy as sp
from click.testing import CliRunner

from derive.derivation import derive_spec
from derive.errors import DerivationError
from derive.explain import docs as docs_module
from derive.explain import model as steps_module
from derive.explain import render as render_module
from derive.explain.command import explain
from derive.explain.docs import family_specs, render_docs, rst_to_markdown
from derive.explain.special import special_cases
from derive.explain.steps import build_explanation
from derive.spec import CATALOGUE, FAMILIES, Spec, command_args
from derive.symbolic import families as families_module
from derive.symbolic.ersde import s

from .conftest import ROOT

DOCS = ROOT / "docs"
TITLES = (
    "The forward process and its marginal",
    "Drift, diffusion and log-SNR",
    "The reverse dynamics: the ER SDE",
    "Normalized coordinates",
    "The exact solution of one step",
    "Expanding the prediction: the weights",
    "Multistep derivative estimates",
    "The final update",
    "Special cases",
    "Order conditions",
)
#: one spec per solver of the catalogue (orders aside), as in the docs: every family x dynamics
SPECS = [spec for family in FAMILIES for spec in family_specs(family)]

# Explanations are built once per spec for the tests that exercise printing and the docs pages; the tests
# about checks build their own, so there the checks demonstrably run.
_BUILT: dict[Spec, steps_module.Explanation] = {}


def cached_build(spec: Spec) -> steps_module.Explanation:
    if spec not in _BUILT:
        _BUILT[spec] = build_explanation(spec)
    return _BUILT[spec]


@pytest.fixture
def cli():
    """The derive command group with ``explain`` (as derive.cli wires it: main.add_command(explain))."""
    from derive.cli import main

    if "explain" not in main.commands:
        main.add_command(explain)
    return main


def run(cli, args):
    return CliRunner().invoke(cli, ["explain", *args], catch_exceptions=False)


def test_specs_cover_every_family_and_dynamics_of_the_catalogue():
    wanted = {(spec.family, spec.resolved_dynamics, spec.phi_text) for spec in CATALOGUE}
    assert wanted <= {(spec.family, spec.resolved_dynamics, spec.phi_text) for spec in SPECS}


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.name)
def test_explain_every_catalogue_solver_in_every_format(cli, spec, monkeypatch):
    monkeypatch.setattr("derive.explain.command.build_explanation", cached_build)
    args = shlex.split(command_args(spec))
    outputs = {}
    for fmt in ("text", "latex", "markdown"):
        result = run(cli, [*args, "--format", fmt])
        assert result.exit_code == 0, result.stderr
        assert result.stderr == ""
        outputs[fmt] = result.stdout
    explanation = cached_build(spec)
    assert explanation.passed and len(explanation.steps) == 10
    summary = f"All {len(explanation.checks)} checks passed."
    for fmt, text in outputs.items():
        for title in TITLES:
            assert title in text, (fmt, title)
        assert "FAILED" not in text
    assert summary in outputs["text"] and summary in outputs["markdown"]
    assert outputs["text"].startswith(f"derive explain {command_args(spec)}\n")
    latex = outputs["latex"]
    assert latex.startswith("\\documentclass") and latex.rstrip().endswith("\\end{document}")
    assert latex.count("\\begin{") == latex.count("\\end{")
    # the formulas are SymPy's printing of what the derivation holds, e.g. phi and the ratio r
    phi = steps_module.Formula(sp.Function("phi")(s), explanation.phi)
    ratio = next(f for f in explanation.steps[4].formulas if f.lhs == steps_module.R)
    assert (
        render_module.latex_formula(phi) in latex and render_module.latex_formula(phi) in outputs["markdown"]
    )
    assert (
        render_module.pretty_formula(ratio, render_module.WIDTH - 4).splitlines()[0].strip()
        in outputs["text"]
    )
    assert "$$\n" in outputs["markdown"] and "| passed |" in outputs["markdown"]


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed (optional check)")
def test_latex_output_compiles(tmp_path):
    tex = tmp_path / "explain.tex"
    tex.write_text(render_module.render(cached_build(SPECS[0]), "latex"))
    result = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", tex.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:]


def test_explanation_is_built_from_the_emitted_derivation():
    spec = Spec("ersde", 2, "sde")
    explanation = build_explanation(spec)
    step, plan = derive_spec(spec)
    assert explanation.step == step and explanation.plan == plan
    weights = explanation.steps[5]
    closed = [f.rhs for f in weights.formulas if f.lhs == sp.Symbol("c_1", real=True)]
    assert plan.weights[1].closed in closed


def test_out_writes_the_file(cli, tmp_path):
    out = tmp_path / "edm.tex"
    result = run(
        cli, ["--family", "edm", "--order", "1", "--dynamics", "ode", "--format", "latex", "--out", str(out)]
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(out)
    assert out.read_text().startswith("\\documentclass")
    assert [p.name for p in tmp_path.iterdir()] == ["edm.tex"]  # no temporary file left behind


@pytest.mark.parametrize(
    "args, message",
    [
        (["--family", "nope"], "unknown family 'nope'"),
        (["--order", "x"], "order must be a whole number"),
        (["--order", "9"], "order must be between 1 and"),
        (["--format", "pdf"], "unknown format 'pdf'"),
        (["--dynamics", "ode"], "family ersde takes its dynamics from --phi"),
        (["--family", "vpsde", "--dynamics", "sde", "--prediction", "score"], "unknown prediction 'score'"),
        (["--family", "edm", "--dynamics", "ode", "--schedule", "cosine"], "has no schedule 'cosine'"),
        (["--phi", "s**0.5"], "phi is not admissible"),
        (["--phi", "__import__('os')"], "phi"),
    ],
)
def test_bad_input_is_a_one_line_error(cli, args, message):
    result = run(cli, args)
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("derive: error: ") and message in lines[0], result.stderr


def test_checks_run_every_time_and_a_failure_shows(cli, monkeypatch):
    """Make SymPy's zero test fail: the walk-through still prints, marks the checks FAILED, and exits 3."""
    args = ["--family", "edm", "--order", "2", "--dynamics", "ode"]
    assert run(cli, args).exit_code == 0  # caches warm, all passing
    monkeypatch.setattr("derive.checks._is_zero", lambda expr: False)
    result = run(cli, args)
    assert result.exit_code == 3
    # derive.checks.generic_checks ran again (uncached) and raised on its first identity
    assert "[FAILED] generic_checks" in result.stdout and "derived identity failed: drift" in result.stdout
    assert "[FAILED] step_checks" in result.stdout  # derive.checks.step_checks ran and raised
    assert "checks FAILED" in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "check(s) failed in the derivation of edm_order2_ode" in lines[0]
    # markdown marks it too
    result = run(cli, [*args, "--format", "markdown"])
    assert result.exit_code == 3 and "| **FAILED** | generic\\_checks |" in result.stdout


def test_a_wrong_special_case_is_caught(cli, monkeypatch):
    """Break the mean-reverting family update: the special case 'MR is a shift' fails where explain runs it."""
    original = families_module.family_update

    def broken(form, mean_reverting):
        update = original(form, mean_reverting)
        return dataclasses.replace(update, M=sp.Integer(0)) if mean_reverting else update

    monkeypatch.setattr(families_module, "family_update", broken)
    failed = {check.name for check in special_cases() if not check.passed}
    assert failed == {"MR is a shift (data form)", "MR is a shift (noise form)"}
    result = run(cli, ["--family", "ersde", "--order", "1", "--phi", "ode"])
    assert result.exit_code == 3
    assert "[FAILED] MR is a shift (data form)" in result.stdout
    assert "MR is a shift" in result.stderr


def test_a_wrong_step_is_caught(cli, monkeypatch):
    """A wrong noise variance for phi = s^2 fails both step_checks and the DDPM special case."""
    from derive.symbolic import ersde

    original = ersde.derive_step

    def wrong(phi):
        step = original(phi)
        return dataclasses.replace(step, noise_variance=step.noise_variance * 2) if phi == s**2 else step

    monkeypatch.setattr(ersde, "derive_step", wrong)
    explanation = build_explanation(Spec("ersde", 1, "sde"))
    failed = {check.name: check for check in explanation.failed}
    assert set(failed) == {"step_checks", "phi = s^2 is DDPM ancestral sampling"}
    assert "noise variance" in failed["step_checks"].residual


def test_special_cases_are_checked_statements():
    results = special_cases()
    names = {check.name for check in results}
    assert {
        "phi = s is DDIM",
        "phi = s^2 is DDPM ancestral sampling",
        "MR is a shift (data form)",
        "MR is a shift (noise form)",
        "VP has the noise levels of VE",
        "VP update is the VE update (data form)",
        "VP update is the VE update (noise form)",
    } <= names
    assert all(check.passed for check in results)
    ddim = next(check for check in results if check.name == "phi = s is DDIM")
    sigma, sigma_next = sp.symbols("sigma sigma_next", positive=True)
    assert ddim.equations[0].rhs == sigma_next / sigma  # r = s_i+1 / s_i
    ddpm = next(check for check in results if check.name == "phi = s^2 is DDPM ancestral sampling")
    derived = {str(equation.lhs): equation.rhs for equation in ddpm.equations}
    posterior_variance = sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2
    assert sp.simplify(derived["var_posterior"] - posterior_variance) == 0  # derived by Gaussian conditioning
    assert sp.simplify(derived["v"] - posterior_variance) == 0  # the ER SDE step's noise variance


def test_order_conditions_and_local_order_are_measured():
    explanation = build_explanation(Spec("ersde", 3, "ode"))
    order = explanation.steps[9]
    checks = {check.name: check for check in order.checks}
    assert checks["order conditions"].passed and checks["order conditions"].residual == "0"
    slope = float(checks["local order"].residual.split()[-1])
    assert abs(slope - 4) < 0.3


# ---- the docs --------------------------------------------------------------------------------------------
@pytest.fixture
def pages(monkeypatch):
    monkeypatch.setattr(docs_module, "build_explanation", cached_build)
    return render_docs()


def test_docs_pages_on_disk_equal_render_docs(pages):
    """Like `derive gen --all --check`: regenerate with `python -m derive.explain.docs`."""
    assert docs_module.check_docs(DOCS, pages) == "", "docs drifted: run `python -m derive.explain.docs`"
    for relative, text in pages.items():
        assert (DOCS / relative).read_text(encoding="utf-8") == text, relative
    assert {f"generated/{family}.md" for family in FAMILIES} <= set(pages)
    nav = (ROOT / "mkdocs.yml").read_text()
    for relative in pages:
        assert relative in nav, f"{relative} is not in the nav of mkdocs.yml"


def test_docs_check_mode_reports_drift(pages, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(docs_module, "render_docs", lambda: pages)
    docs = tmp_path / "docs"
    assert docs_module.main(["--docs-dir", str(docs)]) == 0
    assert docs_module.main(["--check", "--docs-dir", str(docs)]) == 0
    page = docs / "generated" / "edm.md"
    page.write_text(page.read_text().replace("Order conditions", "Order conditions (edited)"))
    (docs / "generated" / "old-family.md").write_text("stale\n")
    capsys.readouterr()
    assert docs_module.main(["--check", "--docs-dir", str(docs)]) == 1
    out = capsys.readouterr()
    assert "(edited)" in out.out and "old-family.md: no longer generated" in out.out and "differs" in out.err
    assert docs_module.main(["--docs-dir", str(docs)]) == 0
    assert (
        page.read_text() == pages["generated/edm.md"] and not (docs / "generated" / "old-family.md").exists()
    )


def test_docs_refuse_a_failed_check(monkeypatch):
    monkeypatch.setattr("derive.checks._is_zero", lambda expr: False)
    with pytest.raises(DerivationError):
        docs_module._family_page("edm")


def test_rst_to_markdown():
    text = textwrap.dedent(
        """\
        Summary with ``code``, :func:`~derive.spec.Spec` and :math:`h^2 = g^2`.

        .. math:: y = r y_i

        Heading
        -------

        Literal::

            c_0 = 1 - r
        """
    )
    out = rst_to_markdown(text)
    assert "`code`" in out and "`Spec`" in out and "$h^2 = g^2$" in out
    assert "$$\ny = r y_i\n$$" in out and "**Heading**" in out and "```text\nc_0 = 1 - r\n```" in out


# ---- the tutorial and the site ------------------------------------------------------------------------------
_DERIVE_SHIM = """\
import sys

from derive.cli import main
from derive.explain.command import explain

if "explain" not in main.commands:
    main.add_command(explain)
sys.exit(main())
"""

_DRIVER = """\
import json, os, subprocess, sys

sys.path.insert(0, os.getcwd())
namespace = {"__name__": "__tutorial__"}
for index, (language, code) in enumerate(json.load(open(sys.argv[1]))):
    print(f"--- block {index} ({language})", flush=True)
    if language == "sh":
        subprocess.run(["bash", "-euo", "pipefail", "-c", code], check=True)
    else:
        exec(compile(code, f"docs/tutorial.md block {index}", "exec"), namespace)
print("tutorial ok")
"""


def tutorial_blocks() -> list[tuple[str, str]]:
    text = (DOCS / "tutorial.md").read_text(encoding="utf-8")
    return [
        (m.group(1), m.group(2))
        for m in re.finditer(r"^```(sh|python)\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    ]


def test_tutorial_code_blocks_run(tmp_path):
    """Every sh and python block of docs/tutorial.md, in order, in a fresh folder (derive on PATH)."""
    blocks = tutorial_blocks()
    assert sum(language == "sh" for language, _ in blocks) >= 3
    assert sum(language == "python" for language, _ in blocks) >= 3
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "derive"
    shim.write_text(f"#!{sys.executable}\n{_DERIVE_SHIM}")
    shim.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "blocks.json").write_text(json.dumps(blocks))
    (tmp_path / "driver.py").write_text(_DRIVER)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "blocks.json")],
        cwd=work,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.rstrip().endswith("tutorial ok")
    assert (work / "my_sampler.py").exists() and (work / "my_sampler_derivation.md").exists()


def test_mkdocs_build_strict(tmp_path):
    """The site builds with --strict (fails, never skips, when mkdocs is missing: it is a test dependency)."""
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(site),
        ],
        cwd=tmp_path,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for page in ("index.html", "er-sde/index.html", "tutorial/index.html", "reference/index.html"):
        assert (site / page).exists(), page
    for family in FAMILIES:
        html = (site / "generated" / family / "index.html").read_text(encoding="utf-8")
        assert 'class="arithmatex"' in html
