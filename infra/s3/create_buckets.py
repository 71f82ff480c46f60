#!/usr/bin/env python3
"""Create the pipeline's S3 buckets, or bring existing ones to the same settings. Safe to run again.

Every bucket gets: versioning (an overwritten checkpoint or a deleted model can be restored), all four
public-access blocks, default encryption (SSE-S3), and a lifecycle rule that expires old versions and abandoned
multipart uploads, so versioning does not grow the bill forever.

Needs only boto3. Credentials and region come from the environment (or the AWS config files / an instance
role, as boto3 resolves them); AWS_ENDPOINT_URL points it at another S3 API (the local stack's moto server).

    python infra/s3/create_buckets.py lic-checkpoints lic-mlflow lic-dvc
"""

from __future__ import annotations

import argparse
import sys

import boto3
from botocore.exceptions import ClientError

PUBLIC_ACCESS_BLOCK = {
    "BlockPublicAcls": True,
    "IgnorePublicAcls": True,
    "BlockPublicPolicy": True,
    "RestrictPublicBuckets": True,
}


def lifecycle(noncurrent_days: int) -> dict:
    return {
        "Rules": [
            {
                "ID": "expire-old-versions",
                "Status": "Enabled",
                "Filter": {},
                "NoncurrentVersionExpiration": {"NoncurrentDays": noncurrent_days},
                "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
            }
        ]
    }


def ensure_bucket(s3, name: str, region: str, noncurrent_days: int) -> str:
    """Create `name` unless it exists, then apply the settings. Returns what happened: created or exists.

    Existence is asked first (HeadBucket) because CreateBucket on a bucket one already owns succeeds silently in
    us-east-1 and fails elsewhere.
    """
    try:
        s3.head_bucket(Bucket=name)
        state = "exists"
    except ClientError as err:
        code = err.response["Error"]["Code"]
        if code in ("403", "AccessDenied"):
            raise SystemExit(
                f"error: bucket {name} exists and these credentials may not use it (names are global)"
            ) from None
        if code not in ("404", "NoSuchBucket"):
            raise
        if region == "us-east-1":  # the one region that rejects an explicit LocationConstraint
            s3.create_bucket(Bucket=name)
        else:
            s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": region})
        state = "created"
    s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration=PUBLIC_ACCESS_BLOCK)
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_encryption(
        Bucket=name,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    s3.put_bucket_lifecycle_configuration(Bucket=name, LifecycleConfiguration=lifecycle(noncurrent_days))
    return state


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("buckets", nargs="+", help="bucket names (globally unique on AWS)")
    parser.add_argument("--region", help="region of new buckets (default: the session's, else us-east-1)")
    parser.add_argument(
        "--noncurrent-days", type=int, default=30, help="days an overwritten or deleted version is kept (default 30)"
    )
    args = parser.parse_args(argv)
    session = boto3.session.Session()
    region = args.region or session.region_name or "us-east-1"
    s3 = session.client("s3", region_name=region)
    for name in args.buckets:
        state = ensure_bucket(s3, name, region, args.noncurrent_days)
        print(
            f"{name}: {state}; versioning on, public access blocked, SSE-S3, old versions expire after "
            f"{args.noncurrent_days} days"
        )


if __name__ == "__main__":
    sys.exit(main())
