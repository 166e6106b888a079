"""`dlforge pipeline TASK`: run a task pipeline on texts, files or images and print one JSON line per input. A thin
layer over `dlforge.pipeline(task, model=...)` (dlforge.pipelines), imported when the command runs."""

from __future__ import annotations

import json

from ..errors import DlforgeError
from .common import add_output_flags, escaped_text, number, positive_float, positive_int, seed
from .names import PIPELINE_TASKS

# Task-specific pipeline flags: argparse dest -> (flag, the tasks that take it, the pipeline keyword).
# The keywords are the Hugging Face pipelines' call arguments, so the CLI and Python read the same.
TASK_FLAGS = {
    "top_k": ("--top-k", ("text-classification", "fill-mask", "question-answering", "image-classification"),
              "top_k"),
    "function_to_apply": ("--function-to-apply", ("text-classification",), "function_to_apply"),
    "targets": ("--targets", ("fill-mask",), "targets"),
    "aggregation_strategy": ("--aggregation-strategy", ("token-classification",), "aggregation_strategy"),
    "stride": ("--stride", ("token-classification",), "stride"),
    "doc_stride": ("--doc-stride", ("question-answering",), "doc_stride"),
    "max_answer_len": ("--max-answer-len", ("question-answering",), "max_answer_len"),
    "handle_impossible_answer": ("--handle-impossible-answer", ("question-answering",), "handle_impossible_answer"),
    "others": ("--others", ("sentence-similarity",), "others"),
    "candidate_labels": ("--candidate-labels", ("zero-shot-classification",), "candidate_labels"),
    "hypothesis_template": ("--hypothesis-template", ("zero-shot-classification",), "hypothesis_template"),
    "multi_label": ("--multi-label", ("zero-shot-classification",), "multi_label"),
    "pool": ("--pool", ("image-feature-extraction",), "pool"),
}
SEQ2SEQ_TASKS = ("translation", "summarization", "text2text-generation")
IMAGE_TASKS = ("image-classification", "image-feature-extraction")
# generation flags of the encoder-decoder pipelines, under Hugging Face's keyword names
for _name in ("min_new_tokens", "num_beams", "do_sample", "temperature", "top_p", "length_penalty",
              "no_repeat_ngram_size", "early_stopping", "num_return_sequences", "repetition_penalty", "prefix"):
    TASK_FLAGS[_name] = ("--" + _name.replace("_", "-"), SEQ2SEQ_TASKS, _name)
TASK_FLAGS["top_k"] = ("--top-k", TASK_FLAGS["top_k"][1] + SEQ2SEQ_TASKS, "top_k")


def cmd_pipeline(args) -> int:
    from ..pipelines import pipeline, read_inputs
    from ..pipelines.tasks import ALIASES

    texts = list(args.texts or [])
    if args.file:
        texts += read_inputs(args.file, args.column)
    elif args.column:
        raise DlforgeError("--column needs --file: it picks the column (or JSON field) of a .csv/.tsv/.jsonl file")
    if (args.question or args.context is not None) and args.task != "question-answering":
        raise DlforgeError("--question and --context are options of question-answering only")
    if args.task == "question-answering":  # inputs become {"question", "context"} records
        texts += args.question or []
        if any(isinstance(t, str) for t in texts) and args.context is None:
            raise DlforgeError("question-answering needs --context TEXT for its questions (or --file FILE.jsonl "
                               'of {"question": ..., "context": ...} records)')
        texts = [t if isinstance(t, dict) else {"question": t, "context": args.context} for t in texts]
        if not texts:
            raise DlforgeError("no question: give --question TEXT --context TEXT, or --file FILE.jsonl of "
                               '{"question": ..., "context": ...} records')
    if not texts:
        raise DlforgeError("no input: give texts as arguments or --file FILE (.txt, .csv, .tsv or .jsonl)")
    task = ALIASES.get(args.task, args.task)
    if task in IMAGE_TASKS:  # the inputs are image files or folders of them
        from ..data.processor import expand_image_paths

        texts = expand_image_paths(texts)
    zero_shot = task == "zero-shot-classification"
    options = {}
    for dest, (flag, tasks, keyword) in TASK_FLAGS.items():
        value = getattr(args, dest)
        if value is None or value is False:
            continue
        if task not in tasks:
            raise DlforgeError(f"{flag} is an option of {', '.join(tasks)} only, not of {args.task}")
        options[keyword] = value
    if "targets" in options:
        options["targets"] = [t for group in options["targets"] for t in group.split(",") if t]
    if args.task != "question-answering" and any(isinstance(t, dict) for t in texts):
        raise DlforgeError(f"the records of {args.file} have no 'text' field: choose the field to use with --column")
    seq2seq = task in SEQ2SEQ_TASKS or task.startswith("translation_")
    prefix = options.pop("prefix", None)
    # --max-length is tokens kept per input; Hugging Face's max_length of a generating pipeline means the
    # generated length, so the encoder-decoder tasks take it as their source limit
    length = {("max_source_length" if seq2seq else "max_length"): args.max_length} if args.max_length else {}
    runner = pipeline(args.task, args.model, batch_size=args.batch_size, device=args.device, **length,
                      **({"prefix": prefix} if prefix is not None else {}))
    if zero_shot:
        options["candidate_labels"] = [label for group in args.candidate_labels or [] for label in group.split(",")]
    if task == "text-generation":
        options.update(max_new_tokens=args.max_new_tokens or 50, seed=args.seed)
    if seq2seq:
        options.update(seed=args.seed, **({"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {}))
        if options.get("early_stopping") in ("true", "false"):
            options["early_stopping"] = options["early_stopping"] == "true"
    for text, result in zip(texts, runner(texts, **options)):
        print(json.dumps({"input": text, "output": result}, ensure_ascii=False))
    return 0



def add_parser(sub) -> None:
    """Add `pipeline` to the top-level sub-commands."""
    pipe = sub.add_parser("pipeline", help="run a task pipeline on texts or images (JSON lines out)",
                          description="Run a task pipeline (text-classification, fill-mask, ...) on texts, or "
                                      "image-classification / image-feature-extraction on image files and folders.")
    pipe.add_argument("task", choices=PIPELINE_TASKS, help="the task")
    pipe.add_argument("texts", nargs="*", help="input texts (or --file); image tasks: image files or folders")
    pipe.add_argument("--model", required=True, help="dlforge or Hugging Face model folder, or a hub id (org/name)")
    pipe.add_argument("--file", help="inputs: .txt (one per line), .csv/.tsv (a column) or .jsonl (a field)")
    pipe.add_argument("--column", help="--file's column or JSON field (default: 'text', else a .csv's first column "
                                       "or a .jsonl's whole record)")
    pipe.add_argument("--top-k", type=int, help="how many results per input (classification, fill-mask, "
                                                "question-answering)")
    pipe.add_argument("--others", nargs="+", help="sentence-similarity: texts to compare against")
    pipe.add_argument("--question", action="append", help="question-answering: a question (repeat for several; "
                                                          "texts given as arguments are questions too)")
    pipe.add_argument("--context", help="question-answering: the text the questions are answered from")
    pipe.add_argument("--candidate-labels", action="append", metavar="LABELS",
                      help="zero-shot-classification: labels, comma-separated or the option repeated")
    pipe.add_argument("--hypothesis-template", type=escaped_text,
                      help="zero-shot-classification: sentence with {} for the label (default 'This example is {}.'; "
                           "'This text is about {}.' for embedding models)")
    pipe.add_argument("--multi-label", action="store_true",
                      help="zero-shot-classification: score each label on its own (several may fit)")
    pipe.add_argument("--function-to-apply", choices=("softmax", "sigmoid", "none"),
                      help="text-classification: how logits become scores (default: sigmoid for multi-label "
                           "models, else softmax)")
    pipe.add_argument("--targets", action="append", metavar="WORDS",
                      help="fill-mask: score only these words (comma-separated or the option repeated)")
    pipe.add_argument("--aggregation-strategy", choices=("none", "simple", "first", "average", "max"),
                      help="token-classification: group word pieces into entities (default none: one row per "
                           "token)")
    pipe.add_argument("--stride", type=positive_int,
                      help="token-classification: tokens shared by consecutive windows of a long text")
    pipe.add_argument("--doc-stride", type=positive_int,
                      help="question-answering: tokens shared by consecutive windows of a long context")
    pipe.add_argument("--max-answer-len", type=positive_int, help="question-answering: longest answer in tokens "
                                                                   "(default 15)")
    pipe.add_argument("--handle-impossible-answer", action="store_true",
                      help="question-answering: allow the empty answer when the context holds none")
    pipe.add_argument("--pool", action="store_true",
                      help="image-feature-extraction: one pooled vector per image (default: the token states of a "
                           "ViT, the last feature map of a ResNet, as Hugging Face's pool=False)")
    pipe.add_argument("--max-length", type=positive_int,
                      help="tokens per input; longer inputs are truncated (default: the model's limit, at most 512)")
    pipe.add_argument("--max-new-tokens", type=positive_int,
                      help="generated tokens at most (text-generation: default 50; translation, summarization, "
                           "text2text-generation: default 128)")
    pipe.add_argument("--seed", type=seed, help="random seed for sampling (text-generation, --do-sample)")
    gen = pipe.add_argument_group("translation, summarization, text2text-generation (Hugging Face generate() names)")
    gen.add_argument("--num-beams", type=positive_int, help="beam search with this many beams (default 1: greedy)")
    gen.add_argument("--min-new-tokens", type=int, help="no end-of-sequence before this many tokens")
    gen.add_argument("--do-sample", action="store_true", help="sample instead of greedy/beam search")
    gen.add_argument("--temperature", type=positive_float, help="sampling temperature")
    gen.add_argument("--top-p", type=positive_float, help="nucleus sampling: smallest token set with this mass")
    gen.add_argument("--repetition-penalty", type=positive_float, help="divide seen tokens' logits (1 = off)")
    gen.add_argument("--length-penalty", type=number, help="beam score = log-prob / length**this (default 1)")
    gen.add_argument("--no-repeat-ngram-size", type=int, help="never repeat an n-gram of this size")
    gen.add_argument("--early-stopping", choices=("true", "false", "never"),
                     help="beam search: stop at num_beams finished hypotheses (true), by the heuristic (false, "
                          "default) or never")
    gen.add_argument("--num-return-sequences", type=positive_int, help="outputs per input (<= --num-beams)")
    gen.add_argument("--prefix", type=escaped_text,
                     help="text put before every input (default: the T5 checkpoint's task prefix)")
    pipe.add_argument("--batch-size", type=positive_int, default=32, help="inputs per forward pass")
    pipe.add_argument("--device", help="where the model runs: cpu (default), cuda, cuda:N or auto")
    add_output_flags(pipe)
    pipe.set_defaults(func=cmd_pipeline)

