"""The masked-LM head of a `RealmKnowledgeAugEncoder` initialised from a BERT.

A BERT checkpoint with its MLM head (`cls.predictions.*`, bert-base-uncased) gives it to the encoder as is. Sentence
encoders (all-MiniLM-L6-v2) ship only the `BertModel`, and a random head is a poor start. Without one, the head is
built from what the checkpoint has: the decoder is tied to the word embeddings (as BERT's is), the bias is zero, the
transform's dense layer is the identity, and the transform's LayerNorm has weight `HEAD_START_SCALE` and bias 0. So
the head computes `SCALE * LayerNorm(act(h)) @ E^T`: at a small scale the first predictions are close to uniform and
every weight of the head and the backbone gets a gradient from the first step. Measured on 40 SQuAD passages
(15% of tokens masked, all-MiniLM-L6-v2; log 30522 = 10.33): masked-LM loss 10.92 with BERT's random head, 11.30
with the tied head at scale 1 (MiniLM's last states were trained for sentence similarity, not to name tokens),
10.34 at scale 0.05.
"""

import logging

import torch

logger = logging.getLogger(__name__)

HEAD_START_SCALE = 0.05


@torch.no_grad()
def tie_mlm_head(encoder) -> None:
    """`encoder.cls.predictions` := decoder tied to (or, if untied, a copy of) the word embeddings, zero bias,
    identity transform, transform LayerNorm of weight `HEAD_START_SCALE`."""
    head = encoder.cls.predictions
    words = encoder.realm.embeddings.word_embeddings.weight  # [vocab, hidden]
    if head.decoder.weight is not words:
        head.decoder.weight.copy_(words)
    head.bias.zero_()
    hidden = head.transform.dense.weight.shape[0]
    head.transform.dense.weight.copy_(torch.eye(hidden))
    head.transform.dense.bias.zero_()
    head.transform.LayerNorm.weight.fill_(HEAD_START_SCALE)
    head.transform.LayerNorm.bias.zero_()


def load_or_tie_mlm_head(encoder, mlm_head, source) -> None:
    """The checkpoint's MLM head (`BertOnlyMLMHead`) into `encoder.cls`, or, when `mlm_head` is None, `tie_mlm_head`
    with a warning."""
    if mlm_head is not None:
        encoder.cls.load_state_dict(mlm_head.state_dict())
        logger.info("Encoder MLM head from %s", source)
        return
    tie_mlm_head(encoder)
    logger.warning("%s has no MLM head (cls.predictions): the encoder's head starts from its word embeddings (tied "
                   "decoder, identity transform, near-uniform first predictions), a poor start for REALM "
                   "pretraining: the masked-LM loss starts near log(vocab) and the retriever gets little signal "
                   "until the head has trained; prefer a BERT that ships its MLM head (bert-base-uncased).", source)
