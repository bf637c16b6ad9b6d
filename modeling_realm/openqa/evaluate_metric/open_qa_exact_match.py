"""`evaluate` metric for open-domain QA: exact match and token F1 after SQuAD normalisation, or CuratedTREC regex match.

Load it offline by its local path (a bare name such as "squad" needs the Hub):

    import evaluate
    from modeling_realm.openqa.metrics import OPEN_QA_METRIC_PATH
    metric = evaluate.load(OPEN_QA_METRIC_PATH)
    metric.compute(predictions=["Paris"], references=[["paris", "Paris, France"]])  # {"exact_match": 100.0, ...}
    metric.compute(predictions=["Sweden"], references=[["Swed(en|ish)"]], regex=True)  # CuratedTREC

The scores come from `modeling_realm.openqa.metrics.evaluate_predictions` of the realm-hf package, so this module and
the library always agree; `evaluate` copies only this file into its cache, so realm-hf must be installed.
"""

import datasets
import evaluate

try:  # indented on purpose: evaluate's import scan would otherwise ask to `pip install tokenization`
    from modeling_realm.openqa.metrics import evaluate_predictions
except ImportError as error:
    raise ImportError("The open_qa_exact_match metric needs the realm-hf package (its `tokenization` module): "
                      "pip install realm-hf, or run from a checkout with `pip install -e .`.") from error

_DESCRIPTION = """Open-domain QA answer accuracy as reported by ORQA and REALM. A prediction is correct when, after
SQuAD normalisation (NFD, lower case, no punctuation, no articles a/an/the, single spaces), it equals one of the
question's reference answers; F1 is SQuAD's token F1, the best over the references. With regex=True the references are
CuratedTREC regular expressions, matched case-insensitively from the start of the raw prediction (`re.match`, as
ORQA and DrQA do); that mode has no F1."""

_CITATION = """@inproceedings{lee-etal-2019-latent,
  title = {Latent Retrieval for Weakly Supervised Open Domain Question Answering},
  author = {Lee, Kenton and Chang, Ming-Wei and Toutanova, Kristina},
  booktitle = {Proceedings of ACL},
  year = {2019}
}"""

_INPUTS = """
Args:
    predictions (list of `str`): one predicted answer per question.
    references (list of lists of `str`): the reference answers (or, with regex=True, patterns) of each question.
    regex (`bool`, default False): score with CuratedTREC regex match instead of exact match and F1.
Returns:
    exact_match (`float`): percentage of correct predictions, 0-100.
    f1 (`float`): mean best token F1 in percent (not returned when regex=True).
    count (`int`): number of questions scored.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _INPUTS)
class OpenQaExactMatch(evaluate.Metric):
    """Exact match / F1 (or regex match) of open-domain QA predictions against lists of reference answers."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features({
                "predictions": datasets.Value("string"),
                "references": datasets.Sequence(datasets.Value("string")),
            }),
            reference_urls=["https://github.com/google-research/language/tree/master/language/orqa"],
        )

    def _compute(self, predictions, references, regex=False):
        return evaluate_predictions(predictions, references, match="regex" if regex else "string")
