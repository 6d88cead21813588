"""Recipe: the whole job on one pair, resumable stage by stage, ending in report.md.

transplant (OMP) -> eval -> heal (when configured) -> eval -> progressive distillation -> eval -> drafter checks
-> report.md + end_to_end.json.
A rerun skips every stage whose settings and inputs did not change (``xtok.utils.stages``); the
distillation also resumes inside an interrupted stage from its last checkpoint.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from xtok.config import DraftCheckConfig, EndToEndConfig, EvalConfig
from xtok.distill.heal import run_heal
from xtok.distill.run import run_distill
from xtok.eval.pipeline_report import write_report
from xtok.eval.run import run_eval
from xtok.registry import DRAFT_BACKENDS
from xtok.speculative.run import run_draft_check
from xtok.transplant.run import run_transplant
from xtok.utils.io import provenance, write_json
from xtok.utils.stages import Pipeline, config_key, stage_key


def _bpb(cfg: EndToEndConfig, spec: str, cache_dir) -> dict:
    ecfg = EvalConfig(models=[spec], data=cfg.eval_data, eval=cfg.eval)
    r = run_eval(ecfg, cache_dir, progress=False)[0]
    return {d: v["bits_per_byte"] for d, v in r["domains"].items()} | {"overall": r["overall"]["bits_per_byte"]}


def _draft(cfg: EndToEndConfig, drafter: str, backend: str, k: int, cross: bool, out: Path, cache_dir) -> dict:
    d = cfg.draft_check
    dcfg = DraftCheckConfig(target=cfg.teacher, drafter=drafter, k=k, backend=backend, num_prompts=d.num_prompts,
                            prompt_chars=d.prompt_chars, max_new_tokens=d.max_new_tokens, cross_tokenizer=cross)
    res = run_draft_check(dcfg, cache_dir, out)
    keep = ("acceptance_rate", "mean_acceptance_length", "acceptance_per_position", "speedup", "lossless",
            "tokens_per_second_target_alone", "tokens_per_second_with_drafter")
    return {k_: res[k_] for k_ in keep}


def _backend_ready(name: str) -> str | None:
    """None when the backend can run here, else why not (an optional backend that is not installed)."""
    check = DRAFT_BACKENDS.meta(name).get("available")
    return None if check is None else check()


def run(cfg: EndToEndConfig, cache_dir=None) -> dict:
    run_dir = Path(cfg.out).expanduser().resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    pipe = Pipeline(run_dir)
    k_eval = config_key(cfg.eval_data, config_key(cfg.eval))
    bpb = {
        "untouched student": pipe.stage("eval_student", stage_key(cfg.student, k_eval), lambda: _bpb(cfg, cfg.student, cache_dir)),
        "teacher": pipe.stage("eval_teacher", stage_key(cfg.teacher, k_eval), lambda: _bpb(cfg, cfg.teacher, cache_dir)),
    }

    transplanted = run_dir / "transplant"
    t_cfg = cfg.transplant_config(str(transplanted))
    k_t = config_key(t_cfg)
    pipe.stage("transplant", k_t, lambda: run_transplant(t_cfg, cache_dir, progress=False)[1], outputs=(transplanted,))
    bpb["transplanted (OMP)"] = pipe.stage("eval_transplanted", stage_key(k_t, k_eval),
                                           lambda: _bpb(cfg, str(transplanted), cache_dir))

    start, k_start, heal_report = transplanted, k_t, None
    if cfg.heal is not None:
        healed = run_dir / "heal"
        h_cfg = cfg.heal_config(str(transplanted), str(healed))
        k_h = config_key(h_cfg, k_t, exclude=("out", "overwrite", "model"))

        def heal() -> dict:
            if healed.exists():  # an older, finished run of other settings
                shutil.rmtree(healed)
            return run_heal(h_cfg, cache_dir)[1]

        heal_report = pipe.stage("heal", k_h, heal, outputs=(healed,))
        bpb["healed"] = pipe.stage("eval_healed", stage_key(k_h, k_eval), lambda: _bpb(cfg, str(healed), cache_dir))
        start, k_start = healed, k_h

    distilled = run_dir / "distill"
    d_cfg = cfg.distill_config(str(start), str(distilled))
    k_d = config_key(d_cfg, k_start, exclude=("out", "overwrite", "student"))

    def distill() -> dict:
        if distilled.exists():  # an older, finished run of other settings; an interrupted one resumes by itself
            shutil.rmtree(distilled)
        return run_distill(d_cfg, cache_dir)[1]

    report = pipe.stage("distill", k_d, distill, outputs=(distilled,))
    bpb["distilled"] = pipe.stage("eval_distilled", stage_key(k_d, k_eval), lambda: _bpb(cfg, str(distilled), cache_dir))

    drafters = [("transplanted", str(transplanted), k_t, False), ("distilled", str(distilled), k_d, False)]
    if cfg.heal is not None:
        drafters.insert(1, ("healed", str(start), k_start, False))
    if cfg.draft_check.cross_tokenizer_baseline:
        drafters.insert(0, ("untouched (cross-tokenizer)", cfg.student, stage_key(cfg.student), True))
    rows, notes = [], []
    k_dc = config_key(cfg.draft_check, cfg.teacher, exclude=("k", "backends"))
    for backend in cfg.draft_check.backends:
        why = _backend_ready(backend)
        if why:
            notes.append(f"drafter backend {backend} skipped: {why}")
            continue
        for k in cfg.draft_check.k:
            for label, spec, key, cross in drafters:
                name = f"draft_{backend}_k{k}_{label.split()[0]}"
                out = run_dir / "draft_check" / f"{name}.json"
                res = pipe.stage(name, stage_key(key, k_dc, backend, str(k)),
                                 lambda spec=spec, cross=cross, out=out, k=k, backend=backend:
                                 _draft(cfg, spec, backend, k, cross, out, cache_dir), outputs=(out,))
                rows.append({"drafter": label, "backend": backend, "k": k, **res})

    summary = {"student": cfg.student, "teacher": cfg.teacher, "bits_per_byte": bpb,
               "heal": heal_report and {"stages": heal_report["stages"], "loss": heal_report["loss"]},
               "distill": {"stages": report["stages"], "loss": report["loss"], "sequences": report["sequences"],
                           "seq_len": report["seq_len"]},
               "draft_check": rows, "notes": notes, "seconds": pipe.seconds(), "ran_this_time": pipe.ran}
    write_json(run_dir / "end_to_end.json", summary | {"provenance": provenance(cfg)})
    path = write_report(run_dir, summary)
    return {"report": str(path), "ran": pipe.ran, "seconds": summary["seconds"]}
