"""genrec-sftdata: the Polars data layer of genrec.

Readers of real check-in formats, LLM4POI preprocessing, a synthetic city, and SFT records for
next-POI (GenUP style), SeqRec (BIGRec style) and CTR (TALLRec style).
"""

from importlib.metadata import PackageNotFoundError, version

from genrec_sftdata._amazon import (
    GoracsConfig,
    build_goracs,
    goracs_samples,
    goracs_titles,
    read_amazon_meta,
    read_amazon_reviews,
)
from genrec_sftdata._contract import PREPARED_COLUMNS, RAW_COLUMNS
from genrec_sftdata._errors import SftDataError
from genrec_sftdata._fetch import DataSource, datasets_dir, fetch, list_datasets, verify
from genrec_sftdata._genup import read_genup_records
from genrec_sftdata._genup_build import (
    GENUP_COT_COMPLETION,
    PROFILE_FIELDS,
    build_genup_cot_records,
    build_genup_records,
    genup_cot_reasoning_text,
    genup_profile,
    genup_profiles_map,
    genup_records_from_qa,
    genup_system_prompt,
    llm4poi_frame,
    llm4poi_qa_pairs,
    parse_cot_answer,
    parse_cot_reasoning,
)
from genrec_sftdata._nextpoi import NextPoiConfig, build_next_poi, checkin_sentence_expr
from genrec_sftdata._prepare import PrepareConfig, PreparedData, load_prepared, prepare
from genrec_sftdata._readers import read_checkins, sniff_format
from genrec_sftdata._recsys import read_bookcrossing, read_movielens, read_recbole, write_recbole
from genrec_sftdata._seqrec import CtrConfig, SeqRecConfig, build_ctr, build_seqrec, read_tallrec_json
from genrec_sftdata._sources import prepare_fetched
from genrec_sftdata._synth import CityConfig, synthesize_city
from genrec_sftdata._writers import push_to_hub, to_hf_dataset, write_records

try:
    __version__ = version("genrec-sftdata")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without metadata
    __version__ = "0.0.0"

__all__ = [
    "GENUP_COT_COMPLETION",
    "PREPARED_COLUMNS",
    "PROFILE_FIELDS",
    "RAW_COLUMNS",
    "CityConfig",
    "CtrConfig",
    "DataSource",
    "GoracsConfig",
    "NextPoiConfig",
    "PrepareConfig",
    "PreparedData",
    "SeqRecConfig",
    "SftDataError",
    "__version__",
    "build_ctr",
    "build_genup_cot_records",
    "build_genup_records",
    "build_goracs",
    "build_next_poi",
    "build_seqrec",
    "checkin_sentence_expr",
    "datasets_dir",
    "fetch",
    "genup_cot_reasoning_text",
    "genup_profile",
    "genup_profiles_map",
    "genup_records_from_qa",
    "genup_system_prompt",
    "goracs_samples",
    "goracs_titles",
    "list_datasets",
    "llm4poi_frame",
    "llm4poi_qa_pairs",
    "load_prepared",
    "parse_cot_answer",
    "parse_cot_reasoning",
    "prepare",
    "prepare_fetched",
    "push_to_hub",
    "read_amazon_meta",
    "read_amazon_reviews",
    "read_bookcrossing",
    "read_checkins",
    "read_genup_records",
    "read_movielens",
    "read_recbole",
    "read_tallrec_json",
    "sniff_format",
    "synthesize_city",
    "to_hf_dataset",
    "verify",
    "write_recbole",
    "write_records",
]
