"""The call shapes of transformers 4.x's `"question-answering"` pipeline, as `(question, context or None)` pairs.

4.x took `qa(question=..., context=...)` (strings, or lists of them), `qa("question", "context")`, a dict
`{"question": ..., "context": ...}` or a `SquadExample` (positionally, or as `X=` / `data=`) and lists of those. Here
the context may be left out (`None`): the question is then answered from the model's index.
"""

INPUT_NAMES = ("question", "context", "X", "data")


def qa_examples(args: tuple, inputs: dict) -> tuple[list[tuple[str, str | None]], bool]:
    """`(question, context or None)` pairs from a call's positional `args` and its `inputs` (the keyword arguments
    named in INPUT_NAMES), and whether one example was given (results unwrapped) rather than a list."""
    given = [name for name in ("X", "data") if name in inputs]
    if bool(args) + len(given) > 1:
        raise TypeError(f"Pass the examples once: positionally, as X= or as data=; got {len(args)} positional "
                        f"arguments and {given}.")
    if (args or given) and ({"question", "context"} & inputs.keys()):
        raise TypeError("Pass either examples (positionally, X= or data=) or question=/context=, not both.")
    if len(args) == 2 and all(isinstance(arg, str) for arg in args):
        return [(args[0], args[1])], True  # qa("question", "context")
    if args or given:
        return _from_items(args[0] if len(args) == 1 else list(args) if args else inputs[given[0]])
    if inputs.get("question") is None:
        raise ValueError("Pass a question: qa(question='...'), qa(question='...', context='...') or "
                         "qa(['...', '...']).")
    return _paired(inputs["question"], inputs.get("context"))


def _from_items(items) -> tuple[list[tuple[str, str | None]], bool]:
    if isinstance(items, (str, dict)) or hasattr(items, "question_text"):
        return [_example(items)], True
    if not hasattr(items, "__iter__"):
        raise TypeError(f"Examples must be strings, dicts or SquadExample-like objects (or a list); got "
                        f"{type(items).__name__}.")
    return [_example(item) for item in items], False


def _example(item) -> tuple[str, str | None]:
    """One example: a question string, a `{"question", "context"}` dict (context optional) or an object with
    `question_text` (and `context_text`), like 4.x's SquadExample."""
    if isinstance(item, str):
        return item, None
    if isinstance(item, dict):
        unknown = sorted(set(item) - {"question", "context"})
        if unknown or "question" not in item:
            raise KeyError(f"An example dict takes the keys 'question' and (optionally) 'context'; got {sorted(item)}.")
        return item["question"], item.get("context")
    if hasattr(item, "question_text"):
        return item.question_text, getattr(item, "context_text", None)
    raise TypeError(f"An example must be a question string, a dict with 'question' (and 'context') or an object "
                    f"with question_text (and context_text); got {type(item).__name__}.")


def _paired(question, context) -> tuple[list[tuple[str, str | None]], bool]:
    if isinstance(question, str):
        if not (context is None or isinstance(context, str)):
            raise ValueError("One question takes one context (a string); pass a list of questions for a list of "
                             "contexts.")
        return [(question, context)], True
    questions = list(question)
    contexts = [context] * len(questions) if context is None or isinstance(context, str) else list(context)
    if len(contexts) != len(questions):
        raise ValueError(f"Got {len(contexts)} contexts for {len(questions)} questions; pass one each (or one "
                         "string for all).")
    return list(zip(questions, contexts, strict=True)), False
