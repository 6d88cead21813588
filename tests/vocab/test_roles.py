from xtok.vocab.roles import special_roles
from xtok.vocab.shared import build_token_map


def _pairs(tmap, teacher, student):
    return {teacher.convert_ids_to_tokens(m.teacher_id): student.convert_ids_to_tokens(m.student_id) for m in tmap.specials}


def test_chat_markers_map_by_role_without_collisions(real_tokenizer):
    gemma, smol = real_tokenizer("gemma3-270m"), real_tokenizer("smollm2-135m")
    tmap = build_token_map(gemma, smol)
    pairs = _pairs(tmap, gemma, smol)
    assert pairs["<start_of_turn>"] == "<|im_start|>"
    assert pairs["<end_of_turn>"] == "<|im_end|>"
    students = [m.student_id for m in tmap.specials]
    assert len(students) == len(set(students)), "two teacher specials collapsed onto one student token"


def test_same_text_specials_copied(real_tokenizer):
    qwen, smol = real_tokenizer("qwen2.5-coder-0.5b"), real_tokenizer("smollm2-135m")
    pairs = _pairs(build_token_map(qwen, smol), qwen, smol)
    assert pairs == {"<|endoftext|>": "<|endoftext|>", "<|im_start|>": "<|im_start|>", "<|im_end|>": "<|im_end|>"}


def test_roles_read_from_tokenizer(real_tokenizer):
    roles = special_roles(real_tokenizer("gemma3-270m"))
    gemma = real_tokenizer("gemma3-270m")
    assert roles["bos"] == gemma.bos_token_id and roles["turn_start"] == gemma.convert_tokens_to_ids("<start_of_turn>")
