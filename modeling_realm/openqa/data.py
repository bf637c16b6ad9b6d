"""QA sets for open-QA fine-tuning and evaluation: load question/answer sets and batch them as raw strings.

A QA set is a file read by `modeling_realm.openqa.answers.load_qa_file` (NQ-open jsonl `{"question": str, "answer":
[str]}` per line, DrQA's WebQuestions / CuratedTREC `.txt` files, a JSON array or SQuAD v1.1 JSON) or a directory
written by `datasets.Dataset.save_to_disk` with the same two fields. CuratedTREC answers are regular expressions
(`match="regex"`): their patterns are compiled when loading, so a bad one is reported with its line.
"""

from pathlib import Path

from modeling_realm.openqa.answers import compile_answer_pattern, load_qa_file
from tokenization.sentences import is_blank


def load_qa(path, question_field: str = "question", answer_field: str = "answer", match: str = "string"
            ) -> list[dict]:
    """Examples `{"question": str, "answers": [str, ...]}` from a QA file or a saved `datasets` directory."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No QA data at {path}; pass a jsonl file ({{\"{question_field}\": ..., "
                                f"\"{answer_field}\": [...]}} per line) or a Dataset.save_to_disk directory.")
    if path.is_file():
        return load_qa_file(path, question_field=question_field, answer_field=answer_field, match=match)
    return _load_dataset_dir(path, question_field, answer_field, match)


def _load_dataset_dir(path: Path, question_field: str, answer_field: str, match: str) -> list[dict]:
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{path} is a directory but not a saved dataset ({error}); pass a jsonl file or a "
                                "directory written by Dataset.save_to_disk.") from error
    if isinstance(dataset, datasets.DatasetDict):
        raise ValueError(f"{path} holds a DatasetDict with splits {list(dataset)}; pass the directory of one split "
                         f"({path}/<split>).")
    missing = [name for name in (question_field, answer_field) if name not in dataset.column_names]
    if missing:
        raise ValueError(f"The dataset at {path} has no column(s) {missing} (columns: {dataset.column_names}); pass "
                         "--question-field / --answer-field with the right names.")
    examples = [_example(question, answers, match, f"{path}, row {row}") for row, (question, answers) in
                enumerate(zip(dataset[question_field], dataset[answer_field]))]
    if not examples:
        raise ValueError(f"The dataset at {path} is empty; it needs at least one question.")
    return examples


def _example(question, answers, match: str, where: str) -> dict:
    answers = [answers] if isinstance(answers, str) else answers
    if not isinstance(question, str) or is_blank(question):
        raise ValueError(f"{where}: empty or non-string question {question!r}; fix or drop the row.")
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and not is_blank(a) for a in answers):
        raise ValueError(f"{where}: the answers must be a non-empty list of non-empty strings, got {answers!r}; fix "
                         "or drop the row.")
    if match == "regex":
        for pattern in answers:
            compile_answer_pattern(pattern)  # raises ValueError naming the pattern
    return {"question": question, "answers": list(answers)}


def collate_qa(examples: list[dict]) -> dict:
    """A batch of raw examples -> `{"questions": [str], "answers": [[str]]}` (tokenized later, after retrieval)."""
    return {"questions": [e["question"] for e in examples], "answers": [list(e["answers"]) for e in examples]}
