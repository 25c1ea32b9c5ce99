"""The official clients' side of bench/upload: each a script run as a process of its
own, with the workload's kind, source and bucket as arguments."""

BOTO3 = r"""
import json, os, sys
from concurrent.futures import ThreadPoolExecutor
import boto3
from boto3.s3.transfer import TransferConfig
kind, src, bucket = sys.argv[1], sys.argv[2], sys.argv[3]
s3 = boto3.client("s3", endpoint_url=os.environ["BENCH_ENDPOINT"], region_name="us-east-1")
if kind == "file":
    s3.upload_file(src, bucket, "big", Config=TransferConfig())
elif kind == "folder":
    names = sorted(os.listdir(src))
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda n: s3.upload_file(os.path.join(src, n), bucket, n), names))
else:
    dicts = json.load(open(src))
    def put(i):
        s3.put_object(Bucket=bucket, Key=f"d{i}.json", Body=json.dumps(dicts[i]).encode())
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(put, range(len(dicts))))
"""

# The big file is one resumable upload in 8 MiB chunks, sent one after another:
# transfer_manager.upload_chunks_concurrently uses the XML multipart API, which
# fake-gcs-server does not serve (probed at start, see GS.probe).
GCS = r"""
import json, os, sys
from concurrent.futures import ThreadPoolExecutor
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
kind, src, bucket = sys.argv[1], sys.argv[2], sys.argv[3]
client = storage.Client(
    project="bench",
    credentials=AnonymousCredentials(),
    client_options={"api_endpoint": os.environ["BENCH_ENDPOINT"]},
)
b = client.bucket(bucket)
if kind == "file":
    b.blob("big", chunk_size=8 * 1024 * 1024).upload_from_filename(src)
elif kind == "folder":
    names = sorted(os.listdir(src))
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda n: b.blob(n).upload_from_filename(os.path.join(src, n)), names))
else:
    dicts = json.load(open(src))
    def put(i):
        b.blob(f"d{i}.json").upload_from_string(
            json.dumps(dicts[i]).encode(), content_type="application/json"
        )
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(put, range(len(dicts))))
"""

AZURE = r"""
import json, os, sys
from concurrent.futures import ThreadPoolExecutor
from azure.storage.blob import BlobServiceClient
kind, src, bucket = sys.argv[1], sys.argv[2], sys.argv[3]
service = BlobServiceClient.from_connection_string(
    os.environ["BENCH_CONNECTION_STRING"], api_version=os.environ["BENCH_API_VERSION"]
)
container = service.get_container_client(bucket)
if kind == "file":
    with open(src, "rb") as f:
        container.get_blob_client("big").upload_blob(f, max_concurrency=8)
elif kind == "folder":
    def put_file(n):
        with open(os.path.join(src, n), "rb") as f:
            container.upload_blob(n, f)
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(put_file, sorted(os.listdir(src))))
else:
    dicts = json.load(open(src))
    def put(i):
        container.upload_blob(f"d{i}.json", json.dumps(dicts[i]).encode())
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(put, range(len(dicts))))
"""
