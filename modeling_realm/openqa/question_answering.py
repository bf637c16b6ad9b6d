"""`pipeline("question-answering", model=...)` for REALM checkpoints, the task transformers 5 removed.

transformers 5 refuses the task by name before it looks at the model: `transformers.pipelines.pipeline` checks
`REMOVED_TASKS` ahead of the task registry, and no public hook lets a registered pipeline pass that check (a
config's `custom_pipelines` needs remote code). So `register_question_answering` (run on `import modeling_realm`)
registers the task with `PIPELINE_REGISTRY.register_pipeline` and takes only the `"question-answering"` entry out of
`REMOVED_TASKS`; every other model is still refused with transformers' own message (`refuse`), from the model
loader for a path and from the pipeline for a model object. It does nothing when the task is already served (a
transformers version that has it again, or another package).

The pipeline answers from the model's index when no context is given (`RealmForOpenQA`, as `model.answer()`) and
reads the given context otherwise (`RealmForOpenQA` or `RealmReader`, as `read_context`). Arguments and results are
4.x's where they apply (docs/compatibility.md lists the ones that do not).
"""

import warnings

import transformers.pipelines as transformers_pipelines
from transformers import AutoConfig, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from modeling_realm.models.configuration import RealmConfig
from modeling_realm.models.reader import RealmReader
from modeling_realm.openqa.answering import answer_questions, read_context
from modeling_realm.openqa.model import RealmForOpenQA
from modeling_realm.openqa.qa_inputs import INPUT_NAMES, qa_examples

TASK = "question-answering"
DEFAULT_BATCH_SIZE = 8
MODEL_CLASSES = {"RealmForOpenQA": RealmForOpenQA, "RealmReader": RealmReader}
REMOVED_BECAUSE = getattr(transformers_pipelines, "REMOVED_TASKS", {}).get(
    TASK, "Use the `text-generation` pipeline with a chat model instead.")
# 4.x arguments that have no meaning for REALM, and why.
NOT_FOR_REALM = {
    "doc_stride": "a given context is read in windows of config.reader_seq_len tokens overlapping by a quarter, and "
                  "retrieved blocks fit one window",
    "max_seq_len": "the reader's window is config.reader_seq_len tokens (set it on the model's config)",
    "max_question_len": "questions are cut to config.searcher_seq_len tokens for retrieval and to half the reader "
                        "window for reading",
    "padding": "inputs are padded to the longest window",
}
HUB_KEYS = ("revision", "token", "local_files_only", "cache_dir", "trust_remote_code")


def refuse(what: str):
    """transformers' own error for the removed task, for a model this registration does not cover."""
    raise KeyError(f"The task {TASK} has been removed from transformers. {REMOVED_BECAUSE} modeling_realm "
                   f"registers it again for REALM question-answering checkpoints only (RealmForOpenQA, RealmReader); "
                   f"{what} is not one.")


class RealmQuestionAnsweringModel:
    """What the pipeline loads for a path: the checkpoint's own class, RealmForOpenQA or RealmReader, chosen from its
    config (transformers would try the task's classes in turn, and RealmForOpenQA loads a reader's weights without
    error but with a fresh reader)."""

    @classmethod
    def from_pretrained(cls, path, **kwargs):
        config = AutoConfig.from_pretrained(path, **{key: kwargs[key] for key in HUB_KEYS if key in kwargs})
        if not isinstance(config, RealmConfig):
            refuse(f"{path!r} (a {type(config).__name__} checkpoint)")
        names = [name for name in config.architectures or () if name in MODEL_CLASSES]
        if not names:
            raise ValueError(f"{path!r} holds a {config.architectures or 'REALM'} checkpoint; question-answering "
                             "reads RealmForOpenQA (open-domain, with an index) or RealmReader (a given context) "
                             "checkpoints, such as google/realm-orqa-nq-openqa or google/realm-orqa-nq-reader.")
        return MODEL_CLASSES[names[0]].from_pretrained(path, **kwargs)


class TaskWithoutDefault(dict):
    """The registry entry of the task: asked for a default model (`pipeline("question-answering")` without one), it
    says there is none instead of failing on a missing key."""

    def __missing__(self, key):
        if key == "default":
            raise KeyError(f"{TASK} has no default model with modeling_realm: pass a REALM checkpoint, "
                           f"pipeline({TASK!r}, model='google/realm-orqa-nq-openqa', index=index).")
        raise KeyError(key)


class RealmQuestionAnsweringPipeline(Pipeline):
    """4.x's question-answering call over REALM: `qa(question=..., context=..., top_k=...)`; see the module docstring.

    `index=` (a `BlockIndex`) is attached to a RealmForOpenQA for questions without a context.
    """

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def __init__(self, model, *args, index=None, **kwargs):
        if not isinstance(model, (RealmForOpenQA, RealmReader)):
            refuse(f"a {type(model).__name__}")
        if index is not None and not isinstance(model, RealmForOpenQA):
            raise ValueError("A RealmReader has no question tower to search an index with; load a RealmForOpenQA "
                             "checkpoint to answer from an index, or pass context= to read a passage.")
        super().__init__(model, *args, **kwargs)
        if self.tokenizer is None:
            self.tokenizer = getattr(model, "tokenizer", None)
        if index is not None:
            self.model.index = index

    def _sanitize_parameters(self, top_k=None, topk=None, max_answer_len=None, retrieval=None,
                             handle_impossible_answer=False, align_to_words=False, **unknown):
        check_unknown(unknown)
        if topk is not None:
            warnings.warn("topk is deprecated (as in transformers 4.x): use top_k.", FutureWarning, stacklevel=3)
            top_k = topk if top_k is None else top_k
        for name, value in (("top_k", top_k), ("max_answer_len", max_answer_len)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
        if handle_impossible_answer:
            raise ValueError("handle_impossible_answer=True is not supported: REALM's reader has no 'no answer' "
                             "score, every result is a span of the text read.")
        if align_to_words:
            raise ValueError("align_to_words=True is not supported: REALM's answers are the reader's wordpiece "
                             "spans, as model.answer() gives them (leave align_to_words out).")
        options = {"top_k": top_k, "max_answer_len": max_answer_len, "retrieval": retrieval}
        return {}, {}, {name: value for name, value in options.items() if value is not None}

    def __call__(self, *args, batch_size: int | None = None, **kwargs):
        """Answer one example or a list (see qa_inputs for the shapes). Returns a dict with `score`, `start`, `end`,
        `answer` (plus the evidence `block_id`, `doc_id`, `title`, `text`, ...) for one example and top_k=1, else
        lists. `retrieval` ("dense", "lexical", "hybrid") chooses how blocks are found for questions without a
        context; `batch_size` is the number of such questions per forward pass."""
        inputs = {name: kwargs.pop(name) for name in INPUT_NAMES if name in kwargs}
        options = {**self._postprocess_params, **self._sanitize_parameters(**kwargs)[2]}
        examples, single = qa_examples(args, inputs)
        results = self.answer(examples, batch_size or self._batch_size or DEFAULT_BATCH_SIZE, **options)
        results = [answers[0] if options.get("top_k", 1) == 1 and answers else answers for answers in results]
        return results[0] if single else results

    def answer(self, examples: list[tuple[str, str | None]], batch_size: int, top_k: int = 1,
               max_answer_len: int | None = None, retrieval: str | None = None) -> list[list[dict]]:
        """Per `(question, context or None)` example, its top_k answers: from the index without a context (the
        questions batched), from the context otherwise."""
        if self.tokenizer is None:
            raise ValueError("This pipeline has no tokenizer: pass tokenizer= to pipeline(), or save the tokenizer "
                             "next to the model.")
        results = [None] * len(examples)
        open_domain = [i for i, (_, context) in enumerate(examples) if context is None]
        if open_domain:
            self.check_can_retrieve()
            answers = answer_questions(self.model, self.tokenizer, [examples[i][0] for i in open_domain], top_k,
                                       batch_size, retrieval, max_answer_len)
            for i, found in zip(open_domain, answers, strict=True):
                results[i] = found
        for i, (question, context) in enumerate(examples):
            if context is not None:
                results[i] = read_context(self.model, self.tokenizer, question, context, top_k, max_answer_len)
        return results

    def check_can_retrieve(self):
        if isinstance(self.model, RealmReader):
            raise ValueError("A RealmReader checkpoint reads a given passage: pass context= (qa(question=..., "
                             "context=...)), or load a RealmForOpenQA checkpoint with index= to answer from an index.")
        if self.model.index is None:
            raise ValueError("No index is attached to answer a question without a context: pass one, "
                             f"pipeline({TASK!r}, model=..., index=index) (or set model.index), or pass context= to "
                             "read a given passage.")

    # The Pipeline base class requires the three stages; __call__ above runs them as one step.
    def preprocess(self, inputs):
        return {"examples": qa_examples((inputs,), {})[0]}

    def _forward(self, model_inputs, **options):
        return {"answers": self.answer(model_inputs["examples"], DEFAULT_BATCH_SIZE, **options)}

    def postprocess(self, model_outputs, top_k=1, **options):
        return [answers[0] if top_k == 1 and answers else answers for answers in model_outputs["answers"]]


def check_unknown(unknown: dict):
    """Refuse 4.x arguments that do not apply to REALM (saying why) and arguments 4.x did not take either."""
    for name in unknown.keys() & NOT_FOR_REALM.keys():
        raise ValueError(f"{name} is not supported by REALM's question-answering: {NOT_FOR_REALM[name]}.")
    if unknown:
        raise TypeError(f"question-answering got unexpected arguments {sorted(unknown)}; it takes question, context "
                        "(or examples, X=, data=), top_k, max_answer_len, batch_size and retrieval.")


def register_question_answering():
    """Serve `pipeline("question-answering")` for REALM checkpoints, once (the module docstring says why the task's
    entry leaves transformers' REMOVED_TASKS)."""
    if TASK in PIPELINE_REGISTRY.supported_tasks:
        return  # already registered by us, or served by transformers or another package: leave it as it is
    PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=RealmQuestionAnsweringPipeline,
                                        pt_model=RealmQuestionAnsweringModel)
    PIPELINE_REGISTRY.supported_tasks[TASK] = TaskWithoutDefault(PIPELINE_REGISTRY.supported_tasks[TASK])
    getattr(transformers_pipelines, "REMOVED_TASKS", {}).pop(TASK, None)
