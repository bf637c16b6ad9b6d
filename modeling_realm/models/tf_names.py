"""google's TensorFlow variable names -> this package's state-dict names, for each REALM class.

google-research/language trained REALM and ORQA with TF-Hub modules, so a tower's variables sit under one `module/`
scope per level of module nesting (the names transformers 4.57.6's `load_tf_weights_in_realm` reads):

  retrieval tower, REALM pretraining export   module/module/module/bert/..., module/module/module/cls/predictions/...,
                                              projection module/module/dense/..., module/module/LayerNorm/...
  retrieval tower, fine-tuned (ORQA)          one more `module/`: module/module/module/module/bert/..., projection
                                              module/module/module/dense/..., module/module/module/LayerNorm/...
  knowledge-augmented encoder, plain BERT     bert/..., cls/predictions/...
  reader (ORQA)                               reader/module/bert/..., reader/module/cls/predictions/...,
                                              span scorer reader/dense/ (start/end projection), reader/dense_1/
                                              (output), reader/layer_normalization/
  open-QA block embeddings                    block_emb [num_blocks, projection]

Inside a scope, BERT's TF names map one to one: `layer_N` -> `layer.N`, `kernel` -> `weight` (transposed),
`gamma`/`beta` -> `weight`/`bias`, `*_embeddings` -> `*_embeddings.weight`, the MLM head's `output_bias` -> `bias`.
"""

import re

# (TF scope, torch prefix inside the tower); longer scopes are tried first.
EMBEDDER_SCOPES = (
    ("module/module/module/module/bert/", "realm."),
    ("module/module/module/module/cls/predictions/", "cls.predictions."),
    ("module/module/module/bert/", "realm."),
    ("module/module/module/cls/predictions/", "cls.predictions."),
    ("module/module/module/dense/", "cls.dense."),
    ("module/module/module/LayerNorm/", "cls.LayerNorm."),
    ("module/module/dense/", "cls.dense."),
    ("module/module/LayerNorm/", "cls.LayerNorm."),
)
READER_SCOPES = (
    ("reader/module/bert/", "realm."),
    ("reader/module/cls/predictions/", "cls.predictions."),
    ("reader/dense/", "qa_outputs.dense_intermediate."),
    ("reader/dense_1/", "qa_outputs.dense_output."),
    ("reader/layer_normalization/", "qa_outputs.layer_normalization."),
)
BERT_SCOPES = (("bert/", "realm."), ("cls/predictions/", "cls.predictions."))
BLOCK_EMB = (("block_emb", "block_emb"),)

# Each class: the towers it loads, as (scopes, torch prefix of the tower), and the parts of a google checkpoint that
# belong to another class (skipped: an ORQA checkpoint holds the question tower and the reader together).
LAYOUTS = {
    "RealmEmbedder": ([(EMBEDDER_SCOPES, "")], [READER_SCOPES, BLOCK_EMB]),
    "RealmScorer": ([(EMBEDDER_SCOPES, "embedder.")], [READER_SCOPES, BLOCK_EMB]),
    "RealmRetriever": ([(EMBEDDER_SCOPES, "embedder.")], [READER_SCOPES, BLOCK_EMB]),
    "RealmKnowledgeAugEncoder": ([(BERT_SCOPES, "")], []),
    "RealmReader": ([(READER_SCOPES, "")], [EMBEDDER_SCOPES, BLOCK_EMB]),
    # REALM's pretrained open-QA model reads with a plain BERT (`bert/`, `cls/`), ORQA's with its reader module.
    "RealmForOpenQA": ([(EMBEDDER_SCOPES, "embedder."), (READER_SCOPES, "reader."), (BERT_SCOPES, "reader."),
                        (BLOCK_EMB, "")], []),
}

# Training state that is never a weight: the step counter, optimizer slots, TF2's object graph.
TRAINING_STATE = {"global_step", "_CHECKPOINTABLE_OBJECT_GRAPH"}
OPTIMIZER_PARTS = {"adam_m", "adam_v", "AdamWeightDecayOptimizer", "AdamWeightDecayOptimizer_1", "Adam", "Adam_1",
                   "Momentum", "Adagrad", "LAMB", "LAMB_1"}


def is_training_state(name: str) -> bool:
    return name in TRAINING_STATE or any(part in OPTIMIZER_PARTS for part in name.split("/"))


def torch_leaf(tf_tail: str) -> tuple[str, bool]:
    """`encoder/layer_3/attention/self/query/kernel` -> (`encoder.layer.3.attention.self.query.weight`, True);
    the flag says the array must be transposed (a TF kernel is [in, out], a torch weight [out, in])."""
    parts = [re.sub(r"^layer_(\d+)$", r"layer.\1", part) for part in tf_tail.split("/")]
    leaf = parts[-1]
    if leaf == "kernel":
        return ".".join(parts[:-1] + ["weight"]), True
    if leaf in ("gamma", "beta"):
        return ".".join(parts[:-1] + ["weight" if leaf == "gamma" else "bias"]), False
    if leaf == "output_bias":
        return ".".join(parts[:-1] + ["bias"]), False
    if leaf.endswith("_embeddings"):
        return ".".join(parts + ["weight"]), False
    return ".".join(parts), False


def _match(name: str, scopes) -> tuple[str, str] | None:
    """(scope, torch prefix) of the longest scope `name` lies in."""
    for scope, prefix in sorted(scopes, key=lambda item: -len(item[0])):
        if name == scope or (scope.endswith("/") and name.startswith(scope)):
            return scope, prefix
    return None


def map_names(class_name: str, names) -> tuple[dict[str, tuple[str, bool]], list[str], list[str]]:
    """Sort a checkpoint's variable names for `class_name`.

    Returns ({TF name: (state-dict key, transpose)}, names skipped as training state or another class's part,
    unknown names).
    """
    towers, foreign = LAYOUTS[class_name]
    mapped, skipped, unknown = {}, [], []
    for name in sorted(names):
        tower = next(((m, p) for scopes, p in towers if (m := _match(name, scopes))), None)
        if is_training_state(name) or (tower is None and any(_match(name, scopes) for scopes in foreign)):
            skipped.append(name)
        elif tower is None:
            unknown.append(name)
        elif tower[0][0].endswith("/"):
            (scope, inner), prefix = tower
            key, transpose = torch_leaf(name[len(scope):])
            mapped[name] = (prefix + inner + key, transpose)
        else:
            (_, inner), prefix = tower
            mapped[name] = (prefix + inner, False)
    return mapped, skipped, unknown
