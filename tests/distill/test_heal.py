"""xtok heal on tiny models with real tokenizers: what it trains, the curve, resuming, bad input."""

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.distill.test_run import TEXTS
from tests.test_cli import xtok
from xtok.configfile import config_from_dict
from xtok.distill.heal import CURVE_FILE, run_heal
from xtok.distill.stages import changed_rows
from xtok.models.load import load_tokenizer
from xtok.transplant.apply import save_transplant, transplant
from xtok.vocab.shared import build_token_map


@pytest.fixture(scope="module")
def pair(tiny_model_dir, real_tokenizer, tmp_path_factory):
    """(transplanted folder, original folder): a tiny Qwen2 given SmolLM2's tokenizer, training-free; its provenance
    names a tiny SmolLM2 as the teacher (the heal's default donor map reads its rows)."""
    original = tiny_model_dir("qwen2.5-coder-0.5b")
    model = AutoModelForCausalLM.from_pretrained(original)
    smol = real_tokenizer("smollm2-135m")
    moved, report = transplant(model, load_tokenizer(str(original)), smol, method="subword", head_method="subword")
    out = tmp_path_factory.mktemp("heal") / "transplanted"
    save_transplant(moved, smol, out, report, config={"teacher": str(tiny_model_dir("smollm2-135m"))})
    return out, original


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "train.jsonl"
    texts = ["Gardeners delving into fertilizers empowers Literacy awareness. " * 3, *TEXTS]  # words new to Qwen's
    path.write_text("".join(json.dumps({"text": t * 4, "domain": d}) + "\n" for t, d in zip(texts, ["prose", "code"] * 3)))
    return path


def _cfg(pair, tmp_path, data_file, **kw):
    base = {"recipe": "heal", "model": str(pair[0]), "original": str(pair[1]), "out": str(tmp_path / "healed"),
            "data": {"spec": str(data_file)}, "seq_len": 16, "max_sequences": 6, "batch_size": 2, "grad_accum": 1,
            "save_steps": 2, "logging_steps": 1,
            "stages": [{"train": "new_rows", "steps": 3, "learning_rate": 1e-2, "scheduler": "constant"}]}
    base.update(kw)
    return config_from_dict(base)


@pytest.mark.parametrize("loss,spaces,head_rows,fused", [("alm", ["input", "output"], "all", True),
                                                          ("ce", ["input"], "batch", True),
                                                          ("ce", ["input", "output"], "batch", True),
                                                          ("ce", ["input", "output"], "batch", False)])
def test_heal_trains_only_the_rows_the_transplant_made(pair, tmp_path, data_file, loss, spaces, head_rows, fused):
    stage = {"train": "new_rows", "steps": 3, "learning_rate": 1e-2, "scheduler": "constant", "row_spaces": spaces,
             "head_rows": head_rows}
    cfg = _cfg(pair, tmp_path, data_file, loss=loss, curve_data={"spec": str(data_file)}, curve_steps=2, stages=[stage],
               fused_head=fused)
    out, report = run_heal(cfg)
    assert json.loads((out / "distill_run.json").read_text())["fused_head"] is fused  # the heal's option reaches distill
    before = AutoModelForCausalLM.from_pretrained(pair[0])
    after = AutoModelForCausalLM.from_pretrained(out)
    rows = changed_rows(before, AutoModelForCausalLM.from_pretrained(pair[1]),
                        build_token_map(load_tokenizer(str(pair[0])), load_tokenizer(str(pair[1]))))
    assert 0 < int(rows["input"].sum()) < len(rows["input"])
    from xtok.distill.data import training_blocks

    used = torch.zeros(len(rows["input"]), dtype=torch.bool)
    blocks = training_blocks(load_tokenizer(str(pair[0])), cfg.data, cfg.seq_len, cfg.max_sequences)
    used[blocks[:, :-1].flatten()] = True  # 6 blocks, 3 steps of 2: each seen once; a last token predicts nothing
    held = torch.zeros_like(used)
    held[blocks.flatten()] = True  # what a step's batch holds, inputs and targets
    # the input rows that move are the changed rows the data reads; with head_rows all every changed head row
    # moves (the softmax reaches them all); with batch, the changed head rows the batch holds, and at most one
    # more (the model's first prediction) per position; every other row stays as it was, bit for bit
    for space, want in (("input", rows["input"] & used), ("output", rows["output"])):
        if space not in spaces:
            want = torch.zeros_like(want)
        get = "get_input_embeddings" if space == "input" else "get_output_embeddings"
        moved = (getattr(before, get)().weight != getattr(after, get)().weight).any(1)
        if space == "output" and head_rows == "batch" and space in spaces:
            seen = want & held
            assert seen.any() and not (moved & ~want).any() and not (seen & ~moved).any()
            assert int(moved.sum()) <= int(seen.sum()) + blocks[:, :-1].numel() < int(want.sum())
        else:
            assert torch.equal(moved, want) and (want.any() or space not in spaces), space
    emb = {id(before.get_input_embeddings().weight), id(before.get_output_embeddings().weight)}
    b1 = dict(after.named_parameters())
    for name, p in before.named_parameters():
        if id(p) not in emb:
            assert torch.equal(p, b1[name]), name  # nothing else moves in a new_rows stage
    assert report["loss"] == loss and report["stages"][0]["steps"] == 3 and report["stages"][0]["train_loss"] > 0
    d = before.get_input_embeddings().weight.shape[1]
    want_params = sum(int(rows[s].sum()) * d for s in spaces)  # the untied pair: one matrix per space
    assert report["stages"][0]["trainable_parameters"] == want_params and report["stages"][0]["optimizer"] == "RowAdam"
    curve = json.loads((out / CURVE_FILE).read_text())
    assert [p["step"] for p in curve] == [0, 2, 3] and set(curve[0]["bits_per_byte"]) == {"code", "prose"}
    assert curve[0]["tokens"] == 0 and curve[-1]["tokens"] == 3 * 2 * 16


def test_heal_map_moves_every_new_row_and_nothing_the_original_has(pair, tmp_path, data_file, tiny_model_dir):
    """map_lr: the donor's map moves the rows of every new token, those the data never shows too; the original's rows
    and every other weight stay as they were."""
    donor = tiny_model_dir("smollm2-135m")  # the model whose tokenizer the pair was given: its provenance's teacher
    stage = {"train": "new_rows", "steps": 2, "learning_rate": 1e-2, "scheduler": "constant", "map_lr": 1e-2}
    out, report = run_heal(_cfg(pair, tmp_path, data_file, stages=[stage]))
    before, after = AutoModelForCausalLM.from_pretrained(pair[0]), AutoModelForCausalLM.from_pretrained(out)
    tok, orig_tok = load_tokenizer(str(pair[0])), load_tokenizer(str(pair[1]))
    tmap = build_token_map(tok, orig_tok)
    rows = changed_rows(before, AutoModelForCausalLM.from_pretrained(pair[1]), tmap)
    new = torch.zeros_like(rows["input"])
    new[tmap.new_teacher_ids] = True
    from xtok.distill.data import training_blocks

    held = torch.zeros_like(new)
    held[training_blocks(tok, _cfg(pair, tmp_path, data_file).data, 16, 6).flatten()] = True
    assert (new & ~held).sum() > 1000  # most new tokens are not in the data
    for space, get in (("input", "get_input_embeddings"), ("output", "get_output_embeddings")):
        moved = (getattr(before, get)().weight != getattr(after, get)().weight).any(1)
        assert moved[new].all() and not (moved & ~rows[space]).any(), space
    b1 = dict(after.named_parameters())
    emb = {id(before.get_input_embeddings().weight), id(before.get_output_embeddings().weight)}
    assert all(torch.equal(p, b1[n]) for n, p in before.named_parameters() if id(p) not in emb)
    width, donor_width = before.config.hidden_size, AutoModelForCausalLM.from_pretrained(donor).config.hidden_size
    want = sum(int(rows[s].sum()) * width for s in ("input", "output")) + 2 * donor_width * width  # rows and two maps
    assert report["stages"][0]["trainable_parameters"] == want
    with pytest.raises(ValueError, match="another tokenizer than"):  # the original's is not the transplant's
        run_heal(_cfg(pair, tmp_path, data_file, donor=str(pair[1]), stages=[stage], overwrite=True))
    unnamed = tmp_path / "unnamed"  # a transplant whose folder does not say what it was given
    shutil.copytree(pair[0], unnamed)
    (unnamed / "xtok_provenance.json").unlink()
    with pytest.raises(ValueError, match="does not name the teacher of its transplant"):
        run_heal(_cfg((unnamed, pair[1]), tmp_path, data_file, stages=[stage], out=str(tmp_path / "h")))
    assert not (tmp_path / "h").exists() and not list(tmp_path.glob(".h*"))  # nothing half-written
    with pytest.raises(ValueError, match="map_lr trains a map of a transplant's new rows"):
        _cfg(pair, tmp_path, data_file, stages=[{**stage, "train": "full"}])


def test_heal_cli_and_its_bad_input(pair, tmp_path, data_file, tiny_model_dir):
    model, original = (str(p) for p in pair)
    res = xtok("heal", "--model", model, "--original", original, "--out", str(tmp_path / "h"), "--steps", "0")
    assert res.returncode == 2 and "--steps 0" in " ".join(res.stderr.split())
    res = xtok("heal", "--model", original, "--original", original, "--out", str(tmp_path / "h"), "--steps", "1")
    assert res.returncode == 2 and "nothing to heal" in " ".join(res.stderr.split())
    other = str(tiny_model_dir("qwen2.5-coder-0.5b", hidden_size=32, intermediate_size=64))  # its tokenizer, not its size
    res = xtok("heal", "--model", model, "--original", other, "--out", str(tmp_path / "h"), "--steps", "1")
    assert res.returncode == 2 and "is not a transplant of" in " ".join(res.stderr.split())
    assert not (tmp_path / "h").exists() and not list(tmp_path.glob(".h*"))  # nothing half-written
    with pytest.raises(ValueError, match="use loss alm"):
        _cfg(pair, tmp_path, data_file, loss="forward_kl")
    with pytest.raises(ValueError, match="weight_decay=0.1"):
        run_heal(_cfg(pair, tmp_path, data_file, stages=[{"train": "new_rows", "steps": 1, "learning_rate": 1e-3,
                                                          "weight_decay": 0.1}]))
    tiny = tmp_path / "tiny.jsonl"
    tiny.write_text(json.dumps({"text": "hi"}) + "\n")
    with pytest.raises(ValueError, match="less than one sequence"):
        run_heal(_cfg(pair, tmp_path, tiny, seq_len=64, overwrite=True))
    res = xtok("heal", "--model", model, "--original", original, "--out", str(tmp_path / "h2"), "--steps", "2",
               "--loss", "ce", "--config", str(_write_yaml(tmp_path, data_file)))
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((tmp_path / "h2" / "distill_log.json").read_text())["stages"][0]["steps"] == 2


def _write_yaml(tmp_path, data_file):
    import yaml

    path = tmp_path / "heal.yaml"
    path.write_text(yaml.safe_dump({"recipe": "heal", "model": "x", "original": "y", "out": "z",
                                    "data": {"spec": str(data_file)}, "seq_len": 16, "max_sequences": 4,
                                    "batch_size": 2, "grad_accum": 1}))
    return path
