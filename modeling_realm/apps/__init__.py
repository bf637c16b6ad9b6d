"""What a user runs: the console scripts `realm-qa` (`ask`) and `realm-build-index` (`build_index`), and the
offline demo (`demo`, over the invented biographies of `synthetic`)."""

from modeling_realm.apps.ask import main as realm_qa
from modeling_realm.apps.build_index import main as realm_build_index
from modeling_realm.apps.demo import demo_questions, load_demo

__all__ = ["demo_questions", "load_demo", "realm_build_index", "realm_qa"]
