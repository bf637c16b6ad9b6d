"""The one retrieval path (modeling_realm.retrieval): both index classes satisfy the protocol models rely on, a model
refuses what is not an index, and retrieve_blocks returns one result type for every caller."""

import numpy as np
import pytest
import torch

from index_builder import BlockIndex, ShardedBlockIndex
from modeling_realm import RealmRetriever, RetrievalIndex, RetrievedBlocks, SearchableIndex, retrieve_blocks
from tests.helpers import tiny_config

DIMENSION = 16


def embeddings(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIMENSION)).astype(np.float32)


def block_index(n: int = 12) -> BlockIndex:
    return BlockIndex.from_arrays(embeddings(n), [f"block {i}" for i in range(n)],
                                  doc_ids=[str(i // 3) for i in range(n)], progress=False)


class SearchOnly:
    """A hand-built index with search and dimension only (no texts, no stored embeddings)."""

    dimension = DIMENSION

    def __init__(self, vectors):
        self.vectors = vectors

    def search(self, queries, k):
        scores = queries @ self.vectors.T
        order = np.argsort(-scores, axis=1)[:, :k]
        return np.take_along_axis(scores, order, axis=1), order


def test_both_index_classes_satisfy_the_protocol():
    sharded = ShardedBlockIndex.from_arrays_slice(embeddings(12), [f"block {i}" for i in range(12)], rank=0,
                                                  world_size=1, progress=False)
    for index in (block_index(), sharded):
        assert isinstance(index, RetrievalIndex) and isinstance(index, SearchableIndex)
    assert isinstance(SearchOnly(embeddings(3)), SearchableIndex)
    assert not isinstance(SearchOnly(embeddings(3)), RetrievalIndex)


def test_a_model_refuses_what_is_not_an_index():
    model = RealmRetriever(tiny_config())
    with pytest.raises(TypeError, match="str is not an index.*BlockIndex.load_from_disk"):
        model.index = "my-index"
    assert model.index is None  # nothing was attached


def test_retrieve_blocks_gives_ids_scores_blocks_and_stored_embeddings():
    index = block_index()
    queries = torch.from_numpy(embeddings(12)[[4, 7]])
    found = retrieve_blocks(index, queries, 3, with_embeddings=True)
    assert isinstance(found, RetrievedBlocks)
    assert found.block_ids.dtype == np.int64 and found.scores.dtype == np.float32
    exact = np.argsort(-(queries.numpy() @ embeddings(12).T), axis=1)[:, :3]  # Flat search is exact
    assert found.block_ids.tolist() == exact.tolist()
    assert [[block["block_id"] for block in row] for row in found.blocks] == found.block_ids.tolist()
    # [2, 3, 16]: the stored embeddings of the retrieved blocks, on the queries' dtype and device
    assert found.embeddings.shape == (2, 3, DIMENSION) and found.embeddings.dtype == queries.dtype
    torch.testing.assert_close(found.embeddings, torch.from_numpy(embeddings(12)[found.block_ids]))


def test_exclusion_skips_the_queries_own_document():
    index = block_index()
    queries = embeddings(12)[[4, 7]]  # blocks 4 and 7 belong to documents "1" and "2"
    found = retrieve_blocks(index, queries, 5, exclude_doc_ids=["1", None])
    assert [block["doc_id"] for block in found.blocks[0]].count("1") == 0
    scores = queries @ embeddings(12).T
    allowed = [i for i in np.argsort(-scores[0]) if i // 3 != 1][:5]  # the best blocks outside document "1"
    assert found.block_ids[0].tolist() == allowed
    assert found.block_ids[1].tolist() == np.argsort(-scores[1])[:5].tolist()  # nothing excluded for this query


def test_a_search_only_index_gives_ids_and_scores_without_blocks():
    vectors = embeddings(6)
    found = retrieve_blocks(SearchOnly(vectors), vectors[[2]], 2)
    assert found.block_ids[0, 0] == 2 and found.blocks is None and found.embeddings is None


def lexical_block_index(n: int = 12) -> BlockIndex:
    texts = [f"block {i} about {['rivers', 'mountains', 'cities', 'music'][i % 4]}" for i in range(n)]
    return BlockIndex.from_arrays(embeddings(n), texts, doc_ids=[str(i // 3) for i in range(n)], progress=False,
                                  lexical="bm25")


def test_retrieve_blocks_searches_by_text_in_the_mode_asked():
    index = lexical_block_index()
    queries, texts = embeddings(12)[[4, 7]], ["music", "rivers"]
    for mode in ("lexical", "hybrid", "dense"):
        found = retrieve_blocks(index, queries, 3, query_texts=texts, mode=mode)
        expected = index.search(queries, 3, query_texts=texts, mode=mode)
        assert found.block_ids.tolist() == expected[1].tolist()
    lexical = retrieve_blocks(index, queries, 3, query_texts=texts, mode="lexical")
    assert all("music" in block["text"] for block in lexical.blocks[0])
    # the default with texts and a lexical part is hybrid; without texts, dense
    default = retrieve_blocks(index, queries, 3, query_texts=texts)
    assert default.block_ids.tolist() == retrieve_blocks(index, queries, 3, query_texts=texts,
                                                         mode="hybrid").block_ids.tolist()
    assert retrieve_blocks(index, queries, 3).block_ids.tolist() == index.search(queries, 3)[1].tolist()


def test_exclusions_apply_in_lexical_mode():
    index = lexical_block_index()
    found = retrieve_blocks(index, embeddings(1), 2, exclude_doc_ids=["1"], query_texts=["mountains"],
                            mode="lexical")  # blocks 1, 5 and 9 are about mountains; 5 is in document "1"
    assert found.block_ids[0].tolist() == [1, 9]
    assert all("mountains" in block["text"] for block in found.blocks[0])


@pytest.mark.parametrize("mode, texts, match", [
    ("sparse", ["x"], "must be one of"), ("lexical", None, "pass query_texts"),
    ("hybrid", ["a", "b", "c"], "3 query texts for 1"),
])
def test_retrieval_mode_errors_name_the_fix(mode, texts, match):
    with pytest.raises(ValueError, match=match):
        retrieve_blocks(lexical_block_index(), embeddings(1), 2, query_texts=texts, mode=mode)
    with pytest.raises(ValueError, match="add_lexical"):
        retrieve_blocks(block_index(), embeddings(1), 2, query_texts=["x"], mode="hybrid")
