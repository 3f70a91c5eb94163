"""playbooks/aws.yml, playbooks/aws-teardown.yml and inventories/aws_ec2.yml
against a moto server on loopback: no AWS account, no network.

The tests of the deployment run in file order and share one moto server:
create, re-run (no change), inventory, resource checks, refused teardown,
teardown. Moto gaps worked around here are noted where they matter:
- RDS: moto does not report StorageThroughput, which amazon.aws.rds_instance
  reads for gp3 storage on every re-run, so the test database uses gp2.
- AMIs: moto ships Ubuntu AMIs (owner 099720109477) but no Debian ones, so
  the lookup is tested with the Ubuntu owner/name pattern and login user.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from aws_fixtures import aws_env, boto, inventory_list, moto_url, run_playbook, ssh_public_key  # noqa: E402,F401

ENVIRONMENT = "dev"
PREFIX = f"mlflow-{ENVIRONMENT}"
BUCKET = "mlflow-test-artifacts-0001"
# A moto default AMI: Ubuntu's owner and name scheme, root device /dev/sda1.
AMI_OWNER = "099720109477"
AMI_NAME = "ubuntu/images/hvm-ssd/ubuntu-*-amd64-server-*"
MOTO_AMI = "ami-785db401"


def base_vars(tmp: Path, rds_password: str) -> dict:
    return {
        "aws_resources_environment": ENVIRONMENT,
        "aws_resources_region": "us-east-1",
        "aws_resources_bucket_name": BUCKET,
        "aws_resources_admin_cidrs": ["203.0.113.7/32", "2001:db8::/64"],
        "aws_resources_https_cidrs": ["0.0.0.0/0"],
        "aws_resources_key_name": "mlflow-test",
        "aws_resources_ssh_public_key": ssh_public_key(),
        "aws_resources_instance_count": 2,
        "aws_resources_ami_owner": AMI_OWNER,
        "aws_resources_ami_name": AMI_NAME,
        "aws_resources_login_user": "ubuntu",
        "aws_resources_inventory_cache_dir": str(tmp / "inventory-cache"),
        "aws_resources_rds_enabled": True,
        "aws_resources_rds_password": rds_password,
        "aws_resources_rds_storage_type": "gp2",
        "aws_resources_rds_deletion_protection": True,
    }


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("aws")


@pytest.fixture(scope="module")
def test_vars(workdir, aws_env):
    import secrets

    # The endpoint comes in both ways: the role variable and AWS_URL.
    return {**base_vars(workdir, secrets.token_urlsafe(18)), "aws_resources_endpoint_url": aws_env["AWS_URL"]}


@pytest.fixture(scope="module")
def strangers(aws_env):
    """Instances the project must neither manage nor list."""
    ec2 = boto(aws_env, "ec2")

    def launch(tags: dict) -> str:
        spec = [{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]
        result = ec2.run_instances(ImageId=MOTO_AMI, MinCount=1, MaxCount=1, TagSpecifications=spec)
        return result["Instances"][0]["InstanceId"]

    ids = {
        # Same project, environment and Name as ours, but another role.
        "other-role": launch({"Project": "mlflow", "Environment": ENVIRONMENT, "Role": "worker", "Name": f"{PREFIX}-1"}),
        # Another project.
        "other-project": launch({"Project": "other", "Environment": ENVIRONMENT, "Role": "mlflow-server", "Name": "x-1"}),
        # Ours by tags (another environment) but stopped.
        "stopped": launch({"Project": "mlflow", "Environment": "staging", "Role": "mlflow-server", "Name": "mlflow-staging-1"}),
    }
    ec2.stop_instances(InstanceIds=[ids["stopped"]])
    return ids


def instances(aws_env, **tags) -> list[dict]:
    filters = [{"Name": f"tag:{k}", "Values": [v]} for k, v in tags.items()]
    filters.append({"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]})
    pages = boto(aws_env, "ec2").describe_instances(Filters=filters)["Reservations"]
    return [i for r in pages for i in r["Instances"]]


def ours(aws_env) -> list[dict]:
    return instances(aws_env, Project="mlflow", Environment=ENVIRONMENT, Role="mlflow-server")


# --- Preflight: bad input fails before any AWS call --------------------------------


@pytest.mark.parametrize(
    ("override", "variable"),
    [
        ({"aws_resources_region": ""}, "aws_resources_region"),
        ({"aws_resources_bucket_name": ""}, "aws_resources_bucket_name"),
        ({"aws_resources_bucket_name": "Bad_Bucket..name"}, "aws_resources_bucket_name"),
        ({"aws_resources_admin_cidrs": ["10.0.0.1/8"]}, "aws_resources_admin_cidrs"),
        ({"aws_resources_https_cidrs": ["300.1.2.0/24"]}, "aws_resources_https_cidrs"),
        ({"aws_resources_admin_cidrs": ["0.0.0.0/0"]}, "aws_resources_admin_cidrs"),
        ({"aws_resources_lifecycle_prefix": ""}, "aws_resources_lifecycle_prefix"),
        ({"aws_resources_lifecycle_prefix": "backups/"}, "mlflow_backup_s3_prefix"),
        ({"aws_resources_lifecycle_prefix": "team/", "mlflow_backup_s3_prefix": "team/backups"}, "mlflow_backup_s3_prefix"),
    ],
    ids=["no-region", "no-bucket", "bad-bucket", "cidr-host-bits", "bad-https-cidr", "ssh-from-anywhere",
         "tiering-whole-bucket", "tiering-the-backups", "backups-inside-tiered-prefix"],
)
def test_preflight_refuses_bad_input(aws_env, workdir, override, variable):
    # Another environment (staging) and bucket, so this test is independent of
    # the deployment tests' resources.
    bad = {
        **base_vars(workdir, "not-used-here"),
        "aws_resources_environment": "staging",
        "aws_resources_bucket_name": "mlflow-preflight-check",
        **override,
    }
    run = run_playbook(aws_env, "aws.yml", bad)
    assert run.rc != 0 and run.failed == 1, run
    assert variable in run.output, run
    # The failing task is one of the preflight checks.
    failure = re.search(r"^(fatal|failed): \[localhost\]", run.output, re.MULTILINE)
    assert failure, run
    failed_task = run.output[: failure.start()].rsplit("TASK [", 1)[-1].split("]", 1)[0]
    assert failed_task.startswith("aws_resources : Check "), run
    # Nothing was created: no bucket, role or instance of that environment.
    assert "mlflow-preflight-check" not in [b["Name"] for b in boto(aws_env, "s3").list_buckets()["Buckets"]]
    assert "mlflow-staging-mlflow" not in [r["RoleName"] for r in boto(aws_env, "iam").list_roles()["Roles"]]
    assert not [i for i in instances(aws_env, Environment="staging", Role="mlflow-server") if i["State"]["Name"] != "stopped"]


# --- The deployment, in order -----------------------------------------------------------


@pytest.fixture(scope="module")
def first_run(aws_env, test_vars, strangers, workdir):
    cache = Path(test_vars["aws_resources_inventory_cache_dir"])
    cache.mkdir(parents=True)
    (cache / "stale").write_text("{}")
    return run_playbook(aws_env, "aws.yml", test_vars)


def test_first_run_creates_everything(first_run, aws_env, test_vars):
    assert first_run.rc == 0 and first_run.failed == 0, first_run
    assert first_run.changed > 0, first_run
    names = sorted({t["Key"]: t["Value"] for t in i["Tags"]}["Name"] for i in ours(aws_env))
    assert names == [f"{PREFIX}-1", f"{PREFIX}-2"]
    # The inventory cache was flushed because instances changed.
    assert not Path(test_vars["aws_resources_inventory_cache_dir"]).exists()


def test_second_run_changes_nothing(first_run, aws_env, test_vars):
    cache = Path(test_vars["aws_resources_inventory_cache_dir"])
    cache.mkdir(parents=True, exist_ok=True)
    run = run_playbook(aws_env, "aws.yml", test_vars)
    assert run.rc == 0 and run.failed == 0, run
    assert run.changed == 0, run
    assert cache.exists(), "the cache was flushed without a change"
    assert len(ours(aws_env)) == 2


def test_bucket(first_run, aws_env):
    s3 = boto(aws_env, "s3")
    block = s3.get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"]
    assert all(block.values()) and len(block) == 4
    assert s3.get_bucket_versioning(Bucket=BUCKET)["Status"] == "Enabled"
    sse = s3.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert sse["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    (rule,) = s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]
    assert rule["Status"] == "Enabled"
    # Only the artifacts are tiered: the backups (prefix `backups`) never go to GLACIER.
    assert rule["Filter"] == {"Prefix": "mlflow-artifacts/"}, rule
    assert {(t["Days"], t["StorageClass"]) for t in rule["Transitions"]} == {(30, "STANDARD_IA"), (90, "GLACIER")}
    tags = {t["Key"]: t["Value"] for t in s3.get_bucket_tagging(Bucket=BUCKET)["TagSet"]}
    assert tags == {"Project": "mlflow", "Environment": ENVIRONMENT, "ManagedBy": "ansible"}


def test_iam_least_privilege(first_run, aws_env):
    iam = boto(aws_env, "iam")
    (attached,) = iam.list_attached_role_policies(RoleName=f"{PREFIX}-mlflow")["AttachedPolicies"]
    policy = iam.get_policy(PolicyArn=attached["PolicyArn"])["Policy"]
    document = iam.get_policy_version(PolicyArn=policy["Arn"], VersionId=policy["DefaultVersionId"])["PolicyVersion"]["Document"]
    if isinstance(document, str):
        document = json.loads(document)
    grants = {(tuple(s["Action"]), tuple(s["Resource"])) for s in document["Statement"]}
    assert grants == {
        (("s3:ListBucket",), (f"arn:aws:s3:::{BUCKET}",)),
        (("s3:GetObject", "s3:PutObject", "s3:DeleteObject"), (f"arn:aws:s3:::{BUCKET}/*",)),
    }
    trust = iam.get_role(RoleName=f"{PREFIX}-mlflow")["Role"]["AssumeRolePolicyDocument"]
    if isinstance(trust, str):
        trust = json.loads(trust)
    assert trust["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}
    profile = iam.get_instance_profile(InstanceProfileName=f"{PREFIX}-mlflow")["InstanceProfile"]
    assert [r["RoleName"] for r in profile["Roles"]] == [f"{PREFIX}-mlflow"]


def test_security_groups(first_run, aws_env):
    ec2 = boto(aws_env, "ec2")
    groups = {g["GroupName"]: g for g in ec2.describe_security_groups()["SecurityGroups"]}
    rules = {
        (p["FromPort"], r.get("CidrIp") or r.get("CidrIpv6"))
        for p in groups[f"{PREFIX}-mlflow"]["IpPermissions"]
        for r in p["IpRanges"] + p["Ipv6Ranges"]
    }
    assert rules == {(22, "203.0.113.7/32"), (22, "2001:db8::/64"), (443, "0.0.0.0/0")}
    (db_rule,) = groups[f"{PREFIX}-rds"]["IpPermissions"]
    assert db_rule["FromPort"] == 5432 and not db_rule["IpRanges"]
    assert db_rule["UserIdGroupPairs"][0]["GroupId"] == groups[f"{PREFIX}-mlflow"]["GroupId"]


def test_instances_and_elastic_ips(first_run, aws_env):
    ec2 = boto(aws_env, "ec2")
    addresses = {a["InstanceId"]: a["PublicIp"] for a in ec2.describe_addresses()["Addresses"]}
    for instance in ours(aws_env):
        tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
        assert tags["LoginUser"] == "ubuntu" and tags["Role"] == "mlflow-server"
        assert instance["ImageId"] == MOTO_AMI  # the AMI lookup by owner + name
        assert instance["KeyName"] == "mlflow-test"
        assert instance["MetadataOptions"]["HttpTokens"] == "required"
        assert instance["IamInstanceProfile"]["Arn"].endswith(f"instance-profile/{PREFIX}-mlflow")
        (volume,) = ec2.describe_volumes(VolumeIds=[instance["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]])["Volumes"]
        assert volume["VolumeType"] == "gp3" and volume["Encrypted"] is True
        assert addresses[instance["InstanceId"]] == instance["PublicIpAddress"]


def test_database(first_run, aws_env):
    (db,) = boto(aws_env, "rds").describe_db_instances(DBInstanceIdentifier=f"{PREFIX}-db")["DBInstances"]
    assert db["Engine"] == "postgres" and db["StorageEncrypted"] is True
    assert db["PubliclyAccessible"] is False and db["DeletionProtection"] is True


def test_inventory_lists_exactly_our_instances(first_run, aws_env, strangers, workdir):
    expected = {
        f"{tags['Name']}_{i['InstanceId']}": i["PublicIpAddress"]
        for i in ours(aws_env)
        for tags in [{t["Key"]: t["Value"] for t in i["Tags"]}]
    }
    assert len(expected) == 2
    inventory = inventory_list(aws_env, cwd=workdir)
    hostvars = inventory["_meta"]["hostvars"]
    assert set(hostvars) == set(expected)
    assert set(inventory["mlflow_servers"]["hosts"]) == set(expected)
    assert set(inventory[f"env_{ENVIRONMENT}"]["hosts"]) == set(expected)
    assert "env_staging" not in inventory
    for host, address in expected.items():
        assert hostvars[host]["ansible_host"] == address  # the Elastic IP
        assert hostvars[host]["ansible_user"] == "ubuntu"
    for stranger in strangers.values():
        assert not [h for h in hostvars if h.endswith(stranger)]
    # The switch for bastion/VPN users: connect to the private address.
    private = inventory_list(aws_env, cwd=workdir, MLFLOW_AWS_USE_PRIVATE_IP="true")["_meta"]["hostvars"]
    for instance in ours(aws_env):
        (host,) = [h for h in private if h.endswith(instance["InstanceId"])]
        assert private[host]["ansible_host"] == instance["PrivateIpAddress"]


def test_teardown_refuses_a_bucket_with_artifacts(first_run, aws_env, test_vars):
    boto(aws_env, "s3").put_object(Bucket=BUCKET, Key="1/abc/artifacts/model.pkl", Body=b"x")
    confirm = {"aws_resources_teardown_confirm": PREFIX, "aws_resources_teardown_delete_rds": True}
    run = run_playbook(aws_env, "aws-teardown.yml", test_vars, confirm)
    assert run.rc != 0 and run.failed == 1, run
    assert "aws_resources_teardown_delete_bucket_objects" in run.output, run
    # Refused before deleting anything.
    assert len(ours(aws_env)) == 2
    assert boto(aws_env, "rds").describe_db_instances(DBInstanceIdentifier=f"{PREFIX}-db")["DBInstances"]
    # And without the confirmation nothing runs at all.
    run = run_playbook(aws_env, "aws-teardown.yml", test_vars, {"aws_resources_teardown_delete_bucket_objects": True})
    assert run.rc != 0 and "aws_resources_teardown_confirm" in run.output, run
    assert len(ours(aws_env)) == 2


def test_teardown_removes_everything(first_run, aws_env, test_vars, strangers):
    ids = [i["InstanceId"] for i in ours(aws_env)]
    force = {
        "aws_resources_teardown_confirm": PREFIX,
        "aws_resources_teardown_delete_rds": True,
        "aws_resources_teardown_delete_bucket_objects": True,
    }
    run = run_playbook(aws_env, "aws-teardown.yml", test_vars, force)
    assert run.rc == 0 and run.failed == 0, run
    ec2, iam = boto(aws_env, "ec2"), boto(aws_env, "iam")
    states = {i["InstanceId"]: i["State"]["Name"] for r in ec2.describe_instances(InstanceIds=ids)["Reservations"] for i in r["Instances"]}
    assert set(states.values()) == {"terminated"}
    assert not ec2.describe_addresses()["Addresses"]
    groups = [g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]]
    assert f"{PREFIX}-mlflow" not in groups and f"{PREFIX}-rds" not in groups
    assert not [r for r in iam.list_roles()["Roles"] if r["RoleName"].startswith(PREFIX)]
    assert not [p for p in iam.list_instance_profiles()["InstanceProfiles"] if p["InstanceProfileName"].startswith(PREFIX)]
    assert not [p for p in iam.list_policies(Scope="Local")["Policies"] if p["PolicyName"].startswith(PREFIX)]
    assert BUCKET not in [b["Name"] for b in boto(aws_env, "s3").list_buckets()["Buckets"]]
    assert not [d for d in boto(aws_env, "rds").describe_db_instances()["DBInstances"] if d["DBInstanceIdentifier"].startswith(PREFIX)]
    # Instances that are not ours were left alone.
    alive = {i["InstanceId"] for r in ec2.describe_instances(InstanceIds=list(strangers.values()))["Reservations"] for i in r["Instances"] if i["State"]["Name"] != "terminated"}
    assert alive == set(strangers.values())
