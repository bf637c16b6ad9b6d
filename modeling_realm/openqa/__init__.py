"""Open-domain QA: `RealmForOpenQA` and its `answer()`, the `"open-domain-qa"` and `"question-answering"` pipelines,
fine-tuning batches, QA files, answer matching (normalisation, exact and regex match) and the evaluation metrics."""

from modeling_realm.openqa.answers import (
    compile_answer_pattern,
    exact_match,
    f1_score,
    has_answer,
    load_qa_file,
    normalize_answer,
    regex_match,
)
from modeling_realm.openqa.batches import training_batch
from modeling_realm.openqa.data import collate_qa, load_qa
from modeling_realm.openqa.evaluation import evaluate_openqa
from modeling_realm.openqa.metrics import (
    DEFAULT_KS,
    OPEN_QA_METRIC_PATH,
    evaluate_predictions,
    gold_block_recall,
    retrieval_recall,
)
from modeling_realm.openqa.model import RealmForOpenQA
from modeling_realm.openqa.pipeline import OpenDomainQAPipeline, register_pipeline
from modeling_realm.openqa.question_answering import RealmQuestionAnsweringPipeline, register_question_answering
from modeling_realm.openqa.retriever_pairs import DEFAULT_MINING_BLOCKS, RetrieverPairCollator, mine_retriever_pairs
from modeling_realm.openqa.start import openqa_from_retriever

__all__ = [
    "DEFAULT_KS",
    "DEFAULT_MINING_BLOCKS",
    "OPEN_QA_METRIC_PATH",
    "OpenDomainQAPipeline",
    "RealmForOpenQA",
    "RealmQuestionAnsweringPipeline",
    "RetrieverPairCollator",
    "collate_qa",
    "compile_answer_pattern",
    "evaluate_openqa",
    "evaluate_predictions",
    "exact_match",
    "f1_score",
    "gold_block_recall",
    "has_answer",
    "load_qa",
    "load_qa_file",
    "mine_retriever_pairs",
    "normalize_answer",
    "openqa_from_retriever",
    "regex_match",
    "register_pipeline",
    "register_question_answering",
    "retrieval_recall",
    "training_batch",
]
