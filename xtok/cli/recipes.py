"""The recipe commands: eval, transplant, distill, heal, align, draft-check, ensemble and run."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from xtok.cli.base import USER_ERRORS, State, _config_from_options, _fail, app, console


@app.command("eval")
def eval_cmd(
    models: Annotated[list[str], typer.Argument(help="catalogue names, HF folders or GGUF files")],
    data: Annotated[str, typer.Option(help="bundled:eval, bundled:train, a jsonl/txt file or folder")] = "bundled:eval",
    domains: Annotated[Optional[list[str]], typer.Option("--domain", help="only these domains")] = None,
    max_docs: Annotated[Optional[int], typer.Option(help="documents per domain")] = None,
    max_chars: Annotated[Optional[int], typer.Option(help="truncate each document")] = None,
    window: int = 1024,
    overlap: int = 256,
    batch_tokens: Annotated[Optional[int], typer.Option(help="padded tokens per forward batch [default: 8192, at "
                                                           "least one window]")] = None,
    dtype: str = "float32",
    against: Annotated[Optional[str], typer.Option(help="also the bytes each model's greedy continuations share "
                                                     "with this model's (the original)")] = None,
    prompts: Annotated[int, typer.Option(help="--against: documents whose beginnings are the prompts")] = 8,
    out: Annotated[Optional[Path], typer.Option(help="JSON output (default xtok-out/eval/<models>.json)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON line per model, no tables")] = False,
) -> None:
    """Bits per byte, bytes per token and digit splitting, per domain and overall; --against: greedy agreement."""
    from xtok.configfile import config_from_dict
    from xtok.eval.report import print_tables
    from xtok.eval.run import run_eval
    from xtok.utils.io import default_output

    try:
        cfg = config_from_dict({
            "recipe": "eval", "models": models,
            "data": {"spec": data, "domains": domains or None, "max_docs_per_domain": max_docs, "max_chars_per_doc": max_chars},
            "eval": {"window": window, "overlap": overlap, "batch_tokens": batch_tokens, "dtype": dtype},
            "against": against, "agreement": {"prompts": prompts},
        }, "command line")
        out = out or default_output("eval", models)
        results = run_eval(cfg, State.cache_dir, out, progress=not as_json)
    except USER_ERRORS as exc:
        _fail(exc)
    if as_json:
        for r in results:
            sys.stdout.write(json.dumps(r) + "\n")
    else:
        print_tables(results, console)
        console.print(f"written: {out}")


@app.command("transplant")
def transplant_cmd(
    student: Annotated[Optional[str], typer.Option(help="model to receive the new tokenizer")] = None,
    teacher: Annotated[Optional[str], typer.Option(help="model (or tokenizer) whose vocabulary the student gets")] = None,
    out: Annotated[Optional[Path], typer.Option(help="output folder (a plain HF model folder)")] = None,
    method: Annotated[Optional[str], typer.Option(help="init method for new tokens [default: omp] (xtok ls)")] = None,
    head_method: Annotated[Optional[str], typer.Option(help="init method of the output head [default: subword-prior]")] = None,
    k: Annotated[Optional[int], typer.Option(help="OMP sparsity [default: 8]")] = None,
    candidates: Annotated[Optional[int], typer.Option(help="OMP: search each token's m most correlated anchors [128]")] = None,
    exact: Annotated[Optional[bool], typer.Option("--exact", help="OMP over all anchors (one product with all of them per step)")] = None,
    chunk: Annotated[Optional[int], typer.Option(help="new tokens per OMP step [default: 1024]")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="OMP correlation dtype: auto (candidate search: bf16 screen, "
                                                                  "float32 rescoring, where bf16 is fast; exact: float32), "
                                                                  "float32, bfloat16 (exact OMP: approximate)")] = None,
    out_dtype: Annotated[Optional[str], typer.Option(help="dtype written: source (the student's), float32, bfloat16, "
                                                     "float16")] = None,
    teacher_tokenizer_only: Annotated[Optional[bool], typer.Option(help="use the teacher's tokenizer only")] = None,
    alignment: Annotated[Optional[str], typer.Option(help="xtok align output, for --method tokalign / tokalign+omp")] = None,
    head_fit_tokens: Annotated[Optional[int], typer.Option(help="fit the head on the transplant's own hidden states "
                                                           "over N calibration positions [default: 0, off]")] = None,
    head_fit_teacher_weight: Annotated[Optional[float], typer.Option(help="the teacher's share of the head fit's "
                                                                   "targets (its top-k distribution) [default: 0]")] = None,
    head_fit_share_map: Annotated[Optional[str], typer.Option(help="the head fit first fits the teacher's in-family "
                                                              "shares as one map, moving the families the fit text "
                                                              "reaches (seen) or all [default: off]")] = None,
    calibration_precision: Annotated[Optional[str], typer.Option(help="the calibration's forward passes: float32, bf16, "
                                                                 "auto (bf16 where it is fast: CUDA, AMX, avx512_bf16) [default: "
                                                                 "float32]")] = None,
    head_context: Annotated[Optional[float], typer.Option(help="subword-prior: weight of the context term (the "
                                                          "teacher's in-family preference, mapped) [default: 0, off]")] = None,
    row_norms: Annotated[Optional[str], typer.Option(help="new rows' norms: keep, cap (at the student's own), clamp "
                                                     "(into the student's range) [default: cap]")] = None,
    max_coef_norm: Annotated[Optional[float], typer.Option(help="refuse new rows whose OMP coefficient norm (1 = no "
                                                           "cancellation) is above this: planted codes")] = None,
    overwrite: Annotated[Optional[bool], typer.Option(help="replace an existing output folder")] = None,
    config: Annotated[Optional[str], typer.Option(help="a transplant YAML; options given here override it")] = None,
) -> None:
    """Give STUDENT the TEACHER's tokenizer: shared tokens copied, new ones by OMP (or another method)."""
    from xtok.transplant.run import run_transplant

    given = {"student": student, "teacher": teacher, "out": str(out) if out else None, "method": method,
             "head_method": head_method, "k": k, "candidates": candidates, "exact": exact, "chunk": chunk, "dtype": dtype,
             "out_dtype": out_dtype,
             "teacher_tokenizer_only": teacher_tokenizer_only, "alignment": alignment, "head_fit_tokens": head_fit_tokens,
             "head_fit_teacher_weight": head_fit_teacher_weight, "head_fit_share_map": head_fit_share_map,
             "head_context": head_context, "calibration_precision": calibration_precision,
             "row_norms": row_norms, "max_coef_norm": max_coef_norm, "overwrite": overwrite}
    try:
        cfg = _config_from_options("transplant", config, given, ("student", "teacher"))
        folder, report = run_transplant(cfg, State.cache_dir)
    except USER_ERRORS as exc:
        _fail(exc)
    t = report["tokens"]
    console.print(f"transplanted {report['student']} <- {report['teacher']} tokenizer with {report['method']}: "
                  f"{t['shared_bytes']} shared, {t['shared_special']} special by role, {t['new']} new; "
                  f"{report['seconds']}s -> {folder}")
    for name, rep in report["spaces"].items():
        if rep.get("safety", {}).get("flagged"):
            console.print(f"[yellow]warning[/yellow]: safety scan flagged {rep['safety']['flagged']} new {name} rows as "
                          f"possibly planted codes; see 'safety' in {folder}/transplant_report.json")


@app.command("distill")
def distill_cmd(
    config: Annotated[str, typer.Option(help="a distill YAML (path, or name under xtok/configs/distill/; xtok ls)")],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="key=value settings over the config, e.g. stages.0.steps=5")] = None,
    out: Annotated[Optional[Path], typer.Option(help="output folder (overrides the config's out)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing output and any interrupted run")] = False,
) -> None:
    """Token-level distillation TEACHER -> STUDENT (same vocabulary) in progressive stages; rerun to resume."""
    from xtok.configfile import load_config
    from xtok.distill.run import run_distill

    extra = [*(overrides or []), *([f"out={out}"] if out else []), *(["overwrite=true"] if overwrite else [])]
    try:
        cfg = load_config(config, extra, recipe="distill")
        folder, report = run_distill(cfg, State.cache_dir, progress=True)
    except USER_ERRORS as exc:
        _fail(exc)
    _stage_table(f"distill {report['teacher']} -> {report['student']} ({report['loss']})", report)
    console.print(f"written: {folder}")


@app.command("heal")
def heal_cmd(
    model: Annotated[Optional[str], typer.Option(help="the transplanted model (xtok transplant's output)")] = None,
    original: Annotated[Optional[str], typer.Option(help="the model it was transplanted from (own tokenizer)")] = None,
    out: Annotated[Optional[str], typer.Option(help="output folder: the healed model")] = None,
    minutes: Annotated[Optional[float], typer.Option(help="wall-clock budget of the training")] = None,
    steps: Annotated[Optional[int], typer.Option(help="optimizer steps (of a one-stage config)")] = None,
    loss: Annotated[Optional[str], typer.Option(help="alm (the original teaches, chunk by chunk) or ce (the text)")] = None,
    config: Annotated[Optional[str], typer.Option(help="a heal YAML (path or name under xtok/configs/heal/)")] = None,
    precision: Annotated[Optional[str], typer.Option(help="float32, bf16 (autocast; fast on GPUs and AMX CPUs) or auto "
                                                          "[default: float32]")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing output and any interrupted run")] = False,
) -> None:
    """Heal a transplant: its original teaches it across the two tokenizations; rerun to resume."""
    from xtok.distill.heal import run_heal

    try:
        if steps is not None and steps < 1:
            raise ValueError(f"--steps {steps}: give at least 1 step")
        cfg = _config_from_options("heal", config, {"model": model, "original": original, "out": out, "loss": loss,
                                                    "max_minutes": minutes, "precision": precision,
                                                    "overwrite": overwrite or None},
                                   ("model", "original", "out"))
        if steps is not None:
            if len(cfg.stages) != 1:
                raise ValueError(f"--steps sets the steps of a one-stage heal; this config has {len(cfg.stages)} stages: "
                                 "set stages.N.steps=... overrides in the YAML instead")
            cfg = cfg.model_copy(update={"stages": [cfg.stages[0].model_copy(update={"steps": steps})]})
        folder, report = run_heal(cfg, State.cache_dir, progress=True)
    except USER_ERRORS as exc:
        _fail(exc)
    _stage_table(f"heal {report['student']} from {cfg.original} ({report['loss']})", report)
    console.print(f"written: {folder}")


def _stage_table(title: str, report: dict) -> None:
    table = Table(title=title)
    for col in ("stage", "steps", "trainable params", "train loss", "tokens/s", "seconds"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for st in report["stages"]:
        if st.get("skipped"):
            table.add_row(st["stage"], "0", "-", f"skipped ({st['skipped']})", "-", "-")
            continue
        tps = st.get("tokens_per_second")
        table.add_row(st["stage"], str(st["steps"]), f"{st['trainable_parameters'] / 1e6:.1f}M", f"{st['train_loss']:.4g}",
                      f"{tps:.0f}" if tps else "-", f"{st['seconds']:.0f}")
    console.print(table)


@app.command("align")
def align_cmd(
    source: Annotated[Optional[str], typer.Option(help="model (or tokenizer) whose rows are rearranged")] = None,
    target: Annotated[Optional[str], typer.Option(help="tokenizer (or model) to align to")] = None,
    corpus: Annotated[Optional[str], typer.Option(help="text both tokenizers read [default: bundled:train]")] = None,
    out: Annotated[Optional[Path], typer.Option(help="output folder: token_map.json, vectors, align_report.json")] = None,
    max_docs: Annotated[Optional[int], typer.Option(help="documents per domain")] = None,
    max_chars: Annotated[Optional[int], typer.Option(help="truncate each document")] = None,
    embedding: Annotated[Optional[str], typer.Option(help="ppmi-svd or glove [default: ppmi-svd]")] = None,
    dims: Annotated[Optional[int], typer.Option(help="vector dimensions [300]")] = None,
    window: Annotated[Optional[int], typer.Option(help="co-occurrence window [15]")] = None,
    min_count: Annotated[Optional[int], typer.Option(help="min frequency for a vector [5]")] = None,
    pivots: Annotated[Optional[int], typer.Option(help="shared pivot tokens, at least dims [all]")] = None,
    fallback: Annotated[Optional[str], typer.Option(help="init of tokens with no vector [subword]")] = None,
    apply: Annotated[Optional[bool], typer.Option("--apply", help="also write the source model with the target tokenizer")] = None,
    method: Annotated[Optional[str], typer.Option(help="init of new input rows with --apply [tokalign]")] = None,
    head_method: Annotated[Optional[str], typer.Option(help="init of new head rows with --apply [subword-prior]")] = None,
    overwrite: Annotated[Optional[bool], typer.Option("--overwrite", help="replace an existing output folder")] = None,
    config: Annotated[Optional[str], typer.Option(help="an align YAML; options given here override it")] = None,
) -> None:
    """Map every TARGET token to a SOURCE token by TokAlign (co-occurrence vectors related through shared pivots)."""
    from xtok.align.run import run_align

    given = {"source": source, "target": target, "out": str(out) if out else None, "embedding": embedding, "dims": dims,
             "window": window, "min_count": min_count, "pivots": pivots, "fallback": fallback, "apply": apply,
             "method": method, "head_method": head_method, "overwrite": overwrite}
    data = {"spec": corpus, "max_docs_per_domain": max_docs, "max_chars_per_doc": max_chars}
    try:
        cfg = _config_from_options("align", config, given, ("source", "target"), data)
        folder, report = run_align(cfg, State.cache_dir)
    except USER_ERRORS as exc:
        _fail(exc)
    t, q = report["tokens"], report["quality"]
    console.print(f"aligned {report['target']} -> {report['source']}: {t['shared']} shared, {t['aligned']} aligned, "
                  f"{t['no_vector']} without a vector ({report['no_vector_fallback']} init); holdout top-1 "
                  f"{q.get('top1', '-')}, shared agreement {q['shared_agreement']}; {report['seconds']}s -> {folder}")


@app.command("draft-check")
def draft_check_cmd(
    target: Annotated[str, typer.Option(help="the model drafted for")],
    drafter: Annotated[str, typer.Option(help="the draft model (same vocabulary, or --cross-tokenizer)")],
    prompts: Annotated[str, typer.Option(help="documents whose beginnings are the prompts")] = "bundled:eval",
    prompt_domain: Annotated[Optional[list[str]], typer.Option(help="only documents of this domain (repeatable), "
                                                                      "e.g. code")] = None,
    k: Annotated[int, typer.Option(help="draft tokens per round")] = 4,
    num_prompts: int = 8,
    prompt_chars: int = 256,
    max_new_tokens: int = 64,
    backend: Annotated[str, typer.Option(help="hf or vllm (xtok ls lists backends)")] = "hf",
    cross_tokenizer: Annotated[bool, typer.Option(help="baseline: the drafter keeps its own tokenizer (hf: UAG, "
                                                       "vllm: heterogeneous vocab)")] = False,
    draft_vocab: Annotated[int, typer.Option(help="the drafter scores only the N most frequent target tokens "
                                                  "(FR-Spec, both backends); 0 = its full head")] = 0,
    out: Annotated[Optional[Path], typer.Option(help="JSON output (default xtok-out/draft-check/<drafter>.json)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON line")] = False,
) -> None:
    """Acceptance rate, mean acceptance length, per-position acceptance, speed-up, and greedy losslessness."""
    from xtok.configfile import config_from_dict
    from xtok.speculative.run import run_draft_check
    from xtok.utils.io import default_output

    try:
        cfg = config_from_dict({"recipe": "draft_check", "target": target, "drafter": drafter, "prompts": prompts,
                                "prompt_domains": prompt_domain or None, "k": k, "num_prompts": num_prompts,
                                "prompt_chars": prompt_chars, "max_new_tokens": max_new_tokens,
                                "backend": backend, "cross_tokenizer": cross_tokenizer, "draft_vocab": draft_vocab}, "command line")
        out = out or default_output("draft-check", [drafter])
        res = run_draft_check(cfg, State.cache_dir, out, progress=not as_json)
    except USER_ERRORS as exc:
        _fail(exc)
    if as_json:
        sys.stdout.write(json.dumps(res) + "\n")
        return
    table = Table(title=f"drafter {drafter} for {target} (k={k}, {backend})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("acceptance_rate", "mean_acceptance_length", "tokens_per_second_target_alone", "tokens_per_second_with_drafter",
                "speedup", "lossless"):
        v = res[key]
        table.add_row(key, f"{v:.3f}" if isinstance(v, float) else str(v))
    table.add_row("acceptance per position", " ".join("-" if p is None else f"{p:.2f}" for p in res["acceptance_per_position"]))
    console.print(table)
    t = res.get("time")
    if t:
        w, r = t["with_drafter"], t["round_cost_in_target_steps"]
        console.print(f"where the time goes: drafting {w['drafting_s']:.1f} s, verification {w['verification_s']:.1f} s, "
                      f"overhead {w['overhead_s']:.1f} s; a round costs {sum(v or 0 for v in r.values()):.2f} target "
                      f"steps and emits {res['mean_acceptance_length'] or 0:.2f} tokens")
    for warning in res.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {warning}")
    console.print(f"written: {out}")


@app.command("ensemble")
def ensemble_cmd(
    models: Annotated[list[str], typer.Argument(help="two or more models sharing one vocabulary (transplant first)")],
    weights: Annotated[Optional[list[float]], typer.Option("--weight", help="one per model, in order [equal]")] = None,
    mode: Annotated[str, typer.Option(help="prob (mixture of probabilities) or logprob (product of experts)")] = "prob",
    data: str = "bundled:eval",
    max_docs: Annotated[Optional[int], typer.Option(help="documents per domain")] = None,
    max_chars: Annotated[Optional[int], typer.Option(help="truncate each document")] = None,
    window: int = 1024,
    prompt: Annotated[Optional[str], typer.Option(help="also generate greedily from this prompt")] = None,
    out: Annotated[Optional[Path], typer.Option(help="JSON output (default xtok-out/ensemble/<models>.json)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON line")] = False,
) -> None:
    """Bits per byte of a mixture of MODELS against each member, per domain."""
    from xtok.configfile import config_from_dict
    from xtok.ensemble.run import run_ensemble
    from xtok.eval.report import print_tables
    from xtok.utils.io import default_output

    try:
        cfg = config_from_dict({"recipe": "ensemble", "models": models, "weights": weights or None, "mode": mode,
                                "data": {"spec": data, "max_docs_per_domain": max_docs, "max_chars_per_doc": max_chars},
                                "eval": {"window": window, "overlap": min(256, window // 4)}, "prompt": prompt},
                               "command line")
        out = out or default_output("ensemble", models)
        res = run_ensemble(cfg, State.cache_dir, out, progress=not as_json)
    except USER_ERRORS as exc:
        _fail(exc)
    if as_json:
        sys.stdout.write(json.dumps(res) + "\n")
        return
    print_tables([*res["members"], res["ensemble"]], console)
    if "generation" in res:
        console.print(f"[bold]ensemble continues[/] {res['generation']['prompt']!r}: {res['generation']['text']!r}")
    console.print(f"written: {out}")


@app.command("run")
def run_cmd(
    recipe: Annotated[str, typer.Argument(help="a recipe of xtok.recipes (xtok ls)")],
    config: Annotated[str, typer.Option(help="a config name under xtok/configs/RECIPE/ (xtok ls) or a YAML path")],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="key=value settings over the config")] = None,
) -> None:
    """Run one recipe with one config: xtok run end_to_end --config qwen2.5-coder-0.5b_to_smollm2-135m."""
    from xtok.configfile import load_config
    from xtok.recipes import check_recipe, run_recipe

    try:
        check_recipe(recipe)
        cfg = load_config(config, overrides or [], recipe=recipe)
        result = run_recipe(recipe, cfg, State.cache_dir)
    except USER_ERRORS as exc:
        _fail(exc)
    sys.stdout.write(json.dumps(result, default=str) + "\n")
