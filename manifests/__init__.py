"""The factory's data contract: what a run is and how to read, resume and verify it.

Training jobs import this package; it must never import torch, diffusers or ray.
See ARCHITECTURE.md.
"""

from manifests.errors import BadKey, ManifestError, ResumeRefused, RunNotFound, SchemaVersionError
from manifests.fragment import Fragment, MemberIndex, ShardInfo, decode_fragment, encode_fragment
from manifests.keys import member_name, sample_key, split_member
from manifests.layout import RunLayout
from manifests.reader import Run, RunListing
from manifests.resume import ResumePlan, plan_resume
from manifests.run_info import RunInfo, read_run_info, spec_fingerprint, write_run_info, write_success
from manifests.schema import SCHEMA, SCHEMA_VERSION, ImageMeta, SourceIdentity
from manifests.stats import run_stats
from manifests.verify import Problem, VerifyReport, verify_run

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "BadKey",
    "Fragment",
    "ImageMeta",
    "ManifestError",
    "MemberIndex",
    "Problem",
    "ResumePlan",
    "ResumeRefused",
    "Run",
    "RunInfo",
    "RunLayout",
    "RunListing",
    "RunNotFound",
    "SchemaVersionError",
    "ShardInfo",
    "SourceIdentity",
    "VerifyReport",
    "decode_fragment",
    "encode_fragment",
    "member_name",
    "plan_resume",
    "read_run_info",
    "run_stats",
    "sample_key",
    "spec_fingerprint",
    "split_member",
    "verify_run",
    "write_run_info",
    "write_success",
]
