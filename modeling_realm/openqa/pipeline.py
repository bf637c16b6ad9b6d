"""The `"open-domain-qa"` pipeline: `pipeline("open-domain-qa", model=model, tokenizer=tokenizer, index=index)`.

Its call looks like the question-answering pipeline's, `qa(question=..., top_k=..., batch_size=...)` or
`qa(["q1", "q2"])` (with `retrieval="dense" | "lexical" | "hybrid"` to choose how blocks are found), and returns
`score`, `answer`, `start`, `end` plus the evidence (`block_id`, `doc_id`,
`title`, `text`); with `context=` it reads that passage instead of retrieving. The answers are those of
`RealmForOpenQA.answer()`: the pipeline batches questions through the same code.
"""

from transformers import Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from modeling_realm.openqa.answering import answer_questions, read_context
from modeling_realm.openqa.model import RealmForOpenQA

TASK = "open-domain-qa"
DEFAULT_BATCH_SIZE = 8


class OpenDomainQAPipeline(Pipeline):
    """Answers questions with a `RealmForOpenQA` over a `BlockIndex` (see the module docstring)."""

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def __init__(self, *args, index=None, **kwargs):
        super().__init__(*args, **kwargs)
        if index is not None:
            self.model.index = index

    def _sanitize_parameters(self, top_k=None, context=None, retrieval=None, **kwargs):
        if kwargs:
            raise TypeError(f"open-domain-qa got unexpected arguments {sorted(kwargs)}; it takes question, "
                            "context, top_k, batch_size and retrieval.")
        preprocess = {} if context is None else {"context": context}
        answers = {} if top_k is None else {"top_k": top_k}
        forward = {**answers, **({} if retrieval is None else {"retrieval": retrieval})}
        return preprocess, forward, answers

    def __call__(self, question=None, context=None, top_k: int = 1, batch_size: int | None = None,
                 retrieval: str | None = None, **kwargs):
        """Answer one question (a string) or several (a list); `context` (a string, or one per question) skips
        retrieval. `retrieval` ("dense", "lexical", "hybrid"; None: hybrid when the index has a lexical part, else
        dense) chooses how blocks are found. Returns a dict for one question and top_k=1, otherwise lists, as the
        question-answering pipeline does."""
        question = kwargs.pop("questions", question)
        if kwargs:
            raise TypeError(f"open-domain-qa got unexpected arguments {sorted(kwargs)}; it takes question, "
                            "context, top_k, batch_size and retrieval.")
        if question is None:
            raise ValueError("Pass a question: qa(question='...') or qa(['...', '...']).")
        single = isinstance(question, str)
        questions = [question] if single else list(question)
        if context is None:
            size = batch_size or self._batch_size or DEFAULT_BATCH_SIZE
            results = answer_questions(self.model, self.tokenizer, questions, top_k=top_k, batch_size=size,
                                       retrieval=retrieval)
        else:
            contexts = [context] * len(questions) if isinstance(context, str) else list(context)
            if len(contexts) != len(questions):
                raise ValueError(f"Got {len(contexts)} contexts for {len(questions)} questions; pass one each.")
            results = [read_context(self.model, self.tokenizer, q, c, top_k) for q, c in
                       zip(questions, contexts, strict=True)]
        results = [answers[0] if top_k == 1 and answers else answers for answers in results]
        return results[0] if single else results

    # The Pipeline base class requires the three stages; __call__ above runs them as one batched step.
    def preprocess(self, inputs, context=None):
        return {"question": inputs, "context": context}

    def _forward(self, model_inputs, top_k=1, retrieval=None):
        if model_inputs["context"] is not None:
            return {"answers": read_context(self.model, self.tokenizer, model_inputs["question"],
                                            model_inputs["context"], top_k)}
        return {"answers": answer_questions(self.model, self.tokenizer, [model_inputs["question"]], top_k,
                                            retrieval=retrieval)[0]}

    def postprocess(self, model_outputs, top_k=1):
        answers = model_outputs["answers"]
        return answers[0] if top_k == 1 and answers else answers


def register_pipeline():
    PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=OpenDomainQAPipeline, pt_model=RealmForOpenQA)
