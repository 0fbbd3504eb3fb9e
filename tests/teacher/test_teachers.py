"""The two teachers and ``distill teacher-train`` with the tiny backbone on tiny synthetic data."""

import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from cli import main
from distill.config import PrepareConfig, to_dict
from distill.data import Dataset
from distill.io import write_json
from distill.prepare import run as prepare
from distill.runs import save_checkpoint
from student.run import load_run
from teacher.config import TeacherTrainConfig
from teacher.model import build_teacher, item_text_of, load_teacher, trainable_state
from teacher.prompts import E4SREC_PROMPT, HISTORY_TOKEN, MOE_LORA_PROMPT

TINY_TEACHER = [
    "--epochs",
    "1",
    "--positions",
    "1",
    "--prompt-items",
    "5",
    "--batch-size",
    "8",
    "--device",
    "cpu",
    "--eval-batch-size",
    "32",
]


def config(setup, **changes):
    return TeacherTrainConfig(
        data=str(setup / "data"),
        sasrec=str(setup / "sasrec"),
        output=str(setup / "unused"),
        device="cpu",
        **{"prompt_items": 5, **changes},
    )


def make(setup, **changes):
    data = Dataset(setup / "data")
    cfg = config(setup, **changes)
    text = item_text_of(cfg, data, setup)  # cached beside the fixture's runs
    torch.manual_seed(0)
    return build_teacher(cfg, data, load_run(setup / "sasrec", data), torch.device("cpu"), text), data


def histories(data, n=6):
    """Windows the teachers read: 10 items of SASRec context, the last 5 in the prompt."""
    return torch.from_numpy(data.train_windows(5, 10).histories[:n])


def randomize(model):
    """Fresh adapters change nothing (lora_B = 0); give every trained weight a value."""
    with torch.no_grad():
        for p in trainable_state(model).values():
            p.normal_(0, 0.05)


@pytest.mark.parametrize("kind", ["moe-lora", "e4srec"])
def test_scores_cover_the_catalogue(setup, kind):
    teacher, data = make(setup, teacher=kind)
    scores = teacher(histories(data))
    assert scores.shape == (6, data.num_items + 1) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all()


def test_history_slots_hold_the_projected_sasrec_states_in_order(setup):
    teacher, data = make(setup, teacher="moe-lora")
    model = teacher.model
    history = histories(data)
    captured = {}

    def grab(module, args, kwargs):
        captured["embeds"] = kwargs["inputs_embeds"]

    handle = model.backbone.register_forward_pre_hook(grab, with_kwargs=True)
    window = history[:, -5:]
    prompts = teacher.prompts(window)
    with torch.no_grad():
        model(prompts, history, 5)
    handle.remove()
    with torch.no_grad():
        expected = model.slot_projector(model.sasrec(history)[:, -5:][window != 0])  # (S, H), row-major
    history = window
    embeds = captured["embeds"]
    for b in range(len(history)):
        slots = (prompts.input_ids[b] == model.placeholder_id).nonzero().squeeze(1)
        assert len(slots) == int((history[b] != 0).sum())
        first = int((history[:b] != 0).sum())
        for i, position in enumerate(slots):
            torch.testing.assert_close(embeds[b, position], expected[first + i])


def test_titles_precede_their_slots(setup):
    teacher, data = make(setup, teacher="moe-lora", titles=True)
    tokenizer_ids = teacher.prompts._item_ids
    assert tokenizer_ids is not None
    item = int(histories(data)[0, -1])
    assert tokenizer_ids[item][-2] == teacher.model.placeholder_id  # title tokens, slot, separator
    bare, _ = make(setup, teacher="moe-lora", titles=False)
    assert bare.prompts._item_ids is None


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"teacher": "moe-lora"}, {"lora_", "projector.", "gate."}),
        ({"teacher": "moe-lora", "train_sasrec": True}, {"lora_", "projector.", "gate.", "sasrec."}),
        ({"teacher": "moe-lora", "fuse_sasrec": False}, {"lora_", "projector.", "gate."}),
        ({"teacher": "e4srec"}, {"lora_", "projector.", "head."}),
    ],
)
def test_only_adapters_and_new_modules_get_gradients(setup, changes, expected):
    teacher, data = make(setup, **changes)
    randomize(teacher.model)
    teacher.model.train()
    teacher(histories(data)).logsumexp(-1).sum().backward()
    with_grad = {
        n for n, p in teacher.model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0
    }
    assert with_grad, "nothing received a gradient"
    for name in with_grad:
        assert any(key in name for key in expected), f"{name} should be frozen"
    for key in expected:
        assert any(key in name for name in with_grad), f"no gradient reached {key}*"
    frozen = {n for n, p in teacher.model.named_parameters() if not p.requires_grad}
    assert any("embed_tokens" in n for n in frozen)


@pytest.mark.parametrize("kind", ["moe-lora", "e4srec"])
def test_save_load_round_trip_gives_identical_scores(setup, tmp_path, kind):
    teacher, data = make(setup, teacher=kind, train_sasrec=kind == "moe-lora")
    randomize(teacher.model)
    teacher.model.eval()
    cfg = config(setup, teacher=kind, train_sasrec=kind == "moe-lora")
    run_config = {
        "kind": f"teacher-{kind}",
        "dataset": data.identity(tmp_path),
        "sasrec_run": str(setup / "sasrec"),
        "train": to_dict(cfg),
    }
    save_checkpoint(tmp_path / "best", trainable_state(teacher.model), run_config)
    write_json(tmp_path / "config.json", run_config)
    loaded = load_teacher(tmp_path, data)
    h = histories(data)
    with torch.no_grad():
        torch.testing.assert_close(loaded(h), teacher(h), rtol=0, atol=0)


def test_e4srec_prompt_tokens_come_from_the_tokenizer(setup):
    teacher, data = make(setup, teacher="e4srec")
    tokenizer_prefix = teacher.prompts.prefix
    h = histories(data, 2)[:, -5:]
    prompts = teacher.prompts(h)
    row = prompts.input_ids[0][prompts.attention_mask[0].bool()].tolist()
    assert row[: len(tokenizer_prefix)] == tokenizer_prefix
    assert row.count(teacher.model.placeholder_id) == int((h[0] != 0).sum())
    # the texts, not fixed ids, are what the prompts are made of
    assert len(tokenizer_prefix) > 3 and E4SREC_PROMPT != MOE_LORA_PROMPT
    assert HISTORY_TOKEN not in E4SREC_PROMPT


def test_prompts_are_left_padded_with_real_positions(setup):
    teacher, data = make(setup)
    prompts = teacher.prompts(histories(data))
    assert (prompts.attention_mask[:, -1] == 1).all()
    for b in range(len(prompts.input_ids)):
        real = prompts.attention_mask[b].bool()
        assert prompts.position_ids[b][real].tolist() == list(range(int(real.sum())))


@pytest.mark.parametrize("kind", ["moe-lora", "e4srec"])
def test_teacher_train_end_to_end(setup, tmp_path, kind):
    runner = CliRunner()
    run = tmp_path / kind
    result = runner.invoke(
        main,
        [
            "teacher-train",
            "--data",
            str(setup / "data"),
            "--sasrec",
            str(setup / "sasrec"),
            "--llm",
            "tiny",
            "--output",
            str(run),
            "--teacher",
            kind,
            *TINY_TEACHER,
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best_epoch"] == 1 and 0 <= metrics["test"]["ndcg@10"] <= 1
    saved = json.loads((run / "config.json").read_text())
    assert saved["kind"] == f"teacher-{kind}" and saved["train"]["llm"] == "tiny"
    weights = (run / "best" / "model.safetensors").stat().st_size
    assert weights < 2_000_000  # only what was trained, not the backbone
    result = runner.invoke(
        main, ["evaluate", "--run", str(run), "--data", str(setup / "data"), "--split", "test"]
    )
    assert result.exit_code == 0, result.output
    assert f"{metrics['test']['ndcg@10']:.4f}" in result.output


def test_teacher_resume_continues_from_the_last_epoch(setup, tmp_path):
    runner = CliRunner()
    base = [
        "teacher-train",
        "--data",
        str(setup / "data"),
        "--sasrec",
        str(setup / "sasrec"),
        "--output",
        str(tmp_path / "run"),
        *TINY_TEACHER,
    ]
    assert runner.invoke(main, base).exit_code == 0
    other = tmp_path / "other"  # another SASRec: the same run with other weights
    shutil.copytree(setup / "sasrec", other)
    weights = load_file(other / "best" / "model.safetensors")
    save_file({name: w + 0.01 for name, w in weights.items()}, str(other / "best" / "model.safetensors"))
    changed = [*base[:3], "--sasrec", str(other), *base[5:]]
    result = runner.invoke(main, [*changed, "--epochs", "2", "--resume"])
    assert result.exit_code == 1 and f"trained on another SASRec than --sasrec {other}" in result.output
    result = runner.invoke(main, [*base, "--epochs", "2", "--resume"])
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--llm", "/nonexistent/model"], "cannot load backbone"),
        (["--target-modules", "nope_proj"], "no nn.Linear module matches"),
        (["--teacher", "gpt"], "Invalid value for '--teacher'"),
        (["--experts", "3"], "must be divisible by experts"),
        (["--prompt-items", "11"], "is more than its SASRec run's max_len 10"),
    ],
)
def test_bad_options_are_one_line_errors(setup, tmp_path, args, message):
    result = CliRunner().invoke(
        main,
        [
            "teacher-train",
            "--data",
            str(setup / "data"),
            "--sasrec",
            str(setup / "sasrec"),
            "--output",
            str(tmp_path / "run"),
            *TINY_TEACHER,
            *args,
        ],
    )
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output


def test_sasrec_run_from_another_dataset_is_refused(setup, tmp_path):
    other = tmp_path / "other"
    prepare(PrepareConfig(output=str(other), synthetic=True, num_users=40, num_items=30, seed=2))
    result = CliRunner().invoke(
        main,
        [
            "teacher-train",
            "--data",
            str(other),
            "--sasrec",
            str(setup / "sasrec"),
            "--output",
            str(tmp_path / "run"),
            *TINY_TEACHER,
        ],
    )
    assert result.exit_code != 0
    assert "another dataset" in result.output
    assert not (tmp_path / "run").exists()


def test_teacher_train_options_reach_the_run(setup, tmp_path):
    run = tmp_path / "run"
    args = [
        "teacher-train",
        "--data",
        str(setup / "data"),
        "--sasrec",
        str(setup / "sasrec"),
        "--output",
        str(run),
        *TINY_TEACHER,
        "--dtype",
        "bfloat16",
        "--llm-layers",
        "1",
        "--grad-accum",
        "2",
        "--no-titles",
        "--eval-users",
        "10",
        "--train-sasrec",
        "--experts",
        "2",
        "--lora-r",
        "4",
        "--lora-alpha",
        "8",
        "--target-modules",
        "q_proj,v_proj",
        "--warmup",
        "0.5",
        "--weight-decay",
        "0.01",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "config.json").read_text())["train"]
    assert saved["dtype"] == "bfloat16" and saved["llm_layers"] == 1 and saved["grad_accum"] == 2
    assert saved["titles"] is False and saved["train_sasrec"] is True and saved["eval_users"] == 10
    assert saved["target_modules"] == ["q_proj", "v_proj"] and saved["r"] == 4 and saved["experts"] == 2
    metrics = json.loads((run / "metrics.json").read_text())
    assert "(10 users)" in metrics["selected_on"]
    teacher = load_teacher(run, Dataset(setup / "data"))
    assert (
        sum(1 for n, _ in teacher.model.named_modules() if n.endswith(("q_proj", "v_proj"))) == 2
    )  # one layer
    assert teacher.prompts._item_ids is None


# ------------------------------------------------------------------------------------ dense teachers
@pytest.mark.parametrize("kind", ["moe-lora", "e4srec"])
def test_dense_scores_are_causal(setup, kind):
    """Changing item j leaves every score at the positions before j unchanged (prompt, SASRec states and
    per-token gates all come from items at or before a position)."""
    teacher, data = make(setup, teacher=kind)
    randomize(teacher.model)
    teacher.model.eval()
    history = histories(data, 8)
    full = history[(history[:, -5:] != 0).all(1)][:4]  # windows with five real prompt items
    changed = full.clone()
    j = 7  # the third prompt column (of 5, after 5 columns of context)
    changed[:, j] = changed[:, j] % data.num_items + 1
    with torch.no_grad():
        before, after = teacher.scores(full), teacher.scores(changed)  # (B, 5, N + 1)
    first_changed = j - 5
    torch.testing.assert_close(after[:, :first_changed], before[:, :first_changed], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(after[:, first_changed:], before[:, first_changed:])


def test_per_token_gates_read_the_latest_item(setup):
    """The gate at a token is the gate of the latest history item at or before it; at the last slot it is
    iLoRA's per-user gate, softmax(gate(SASRec's last state))."""
    teacher, data = make(setup, teacher="moe-lora")
    randomize(teacher.model)
    model = teacher.model
    history = histories(data, 6)
    window = history[:, -5:]
    prompts = teacher.prompts(window)
    with torch.no_grad():
        states = model.sasrec(history)[:, -5:]
        slots = prompts.input_ids == model.placeholder_id
        gates = model.gate(states, window != 0, slots)  # (B, T, E)
        per_user = torch.softmax(model.gate.mlp(states[:, -1]), dim=-1)  # (B, E)
        empty = torch.softmax(model.gate.mlp(model.gate.empty), dim=-1)  # (E,)
    last_slot = slots.shape[1] - 1 - slots.flip(1).int().argmax(1)  # (B,)
    torch.testing.assert_close(gates[torch.arange(len(history)), last_slot], per_user)
    for b in range(len(history)):
        real = prompts.attention_mask[b].bool()
        first_slot = int(slots[b].int().argmax())
        torch.testing.assert_close(gates[b, real][0], empty)  # the instruction: no item yet
        torch.testing.assert_close(gates[b, first_slot - 1], empty)  # the first title: not its item yet
        items = states[b][window[b] != 0]
        for i, t in enumerate(slots[b].nonzero().squeeze(1).tolist()):
            torch.testing.assert_close(gates[b, t], torch.softmax(model.gate.mlp(items[i]), dim=-1))


@pytest.mark.parametrize("kind", ["moe-lora", "e4srec"])
def test_dense_scores_equal_one_prompt_per_prefix(setup, kind):
    """With the whole history in the prompt and a position-free SASRec, the dense pass scores every
    position exactly as a prompt cut after that position does. (SASRec's right-aligned positions make its
    states depend on how far a position is from the window's end, as in SASRec's own training; zeroing
    them isolates the teacher's own causality.)"""
    teacher, data = make(setup, teacher=kind, prompt_items=10)
    randomize(teacher.model)
    teacher.model.eval()
    with torch.no_grad():
        teacher.model.sasrec.pos_emb.weight.zero_()
    history = torch.from_numpy(data.train_windows(10, 10).histories[:4])  # (4, 10)
    with torch.no_grad():
        dense = teacher.scores(history)  # (4, 10, N + 1)
        for j in range(10):
            real = history[:, j] != 0
            if not real.any():
                continue
            prefix = torch.nn.functional.pad(history[real, : j + 1], (9 - j, 0))  # cut after column j
            torch.testing.assert_close(teacher(prefix), dense[real, j], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["moe-lora", "e4srec"])
def test_an_untrained_fused_teacher_ranks_as_its_sasrec(setup, kind):
    from student.run import sasrec_scorer
    from teacher.model import teacher_scorer

    teacher, data = make(setup, teacher=kind)
    fused = teacher_scorer(teacher, kind)
    sasrec = sasrec_scorer(load_run(setup / "sasrec", data))
    for split in ("valid", "test"):
        assert fused.evaluate(data, split, 16) == sasrec.evaluate(data, split, 16)
    unfused, _ = make(setup, teacher=kind, fuse_sasrec=False)
    assert teacher_scorer(unfused, kind).evaluate(data, "valid", 16) != sasrec.evaluate(data, "valid", 16)


def test_last_objective_still_trains(setup, tmp_path):
    run = tmp_path / "run"
    args = ["teacher-train", "--data", str(setup / "data"), "--sasrec", str(setup / "sasrec")]
    result = CliRunner().invoke(main, [*args, "--output", str(run), *TINY_TEACHER, "--objective", "last"])
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "config.json").read_text())["train"]
    assert saved["objective"] == "last" and saved["fuse_sasrec"] is True
    windows = Dataset(setup / "data").train_windows(5, 10, last=1, stride=1)
    assert f"{len(windows.users):,} windows of 5 ({len(windows.users):,} scored positions" in result.output


def test_iloras_per_expert_scaling_is_an_option(setup):
    teacher, _ = make(setup, teacher="moe-lora", moe_scaling="expert", experts=4, r=16, lora_alpha=32.0)
    layers = [m for n, m in teacher.model.named_modules() if n.endswith("q_proj")]
    assert layers and all(layer.scaling == 32.0 / 4 for layer in layers)
    default, _ = make(setup, teacher="moe-lora", experts=4, r=16, lora_alpha=32.0)
    assert all(m.scaling == 32.0 / 16 for n, m in default.model.named_modules() if n.endswith("q_proj"))


@pytest.mark.parametrize(
    ("kind", "changes"),
    [
        ("moe-lora", {}),
        ("moe-lora", {"item_text": False, "fuse_sasrec": False}),
        ("e4srec", {}),
        ("e4srec", {"item_text": False}),
    ],
)
def test_a_block_of_items_scores_as_the_whole_catalogue(setup, kind, changes):
    """Both teachers score a block of items (the backbone once, the item side of the block only) as the
    whole catalogue's columns: the path of evaluation and top-k export on large catalogues."""
    from distill.scoring import top_k_in_blocks
    from teacher.model import teacher_scorer

    teacher, data = make(setup, teacher=kind, **changes)
    assert (getattr(teacher.model, "item_text", None) is not None) == changes.get("item_text", True)
    randomize(teacher.model)
    teacher.model.eval()
    scorer = teacher_scorer(teacher, kind)
    history = histories(data)
    keep = torch.from_numpy(data.train_windows(5, 10).position[:6] >= 0)  # (6, 5) the scored positions
    n = data.num_items
    with torch.no_grad():
        last, dense = scorer.last(history, None), scorer.dense(history, None)[keep]  # (6, N + 1), (M, N + 1)
        opened_last = scorer.blocks.last(history, None, 4)
        opened_dense = scorer.blocks.dense(history, None, keep, 4)
        for start, stop in [(1, 5), (5, 9), (n - 2, n + 1), (1, n + 1)]:
            torch.testing.assert_close(opened_last(start, stop), last[:, start:stop])
            torch.testing.assert_close(opened_dense(start, stop), dense[:, start:stop])
        values, items, _ = top_k_in_blocks(opened_dense, n, 7, 4)
    top = dense[:, 1:].topk(7)
    assert torch.equal(items, top.indices + 1)
    torch.testing.assert_close(values, top.values)
