"""Unit tests of ring/moto_server.py's two changes to moto (no ring needed: moto in process):
python3 -m unittest discover -s ring/standins -p 'test_*.py'"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import time
import unittest
from pathlib import Path

import boto3
from botocore.exceptions import ClientError
from moto import mock_aws

SPEC = importlib.util.spec_from_file_location("moto_server", Path(__file__).resolve().parents[1] / "moto_server.py")
moto_server = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(moto_server)
moto_server._answer_without_change_info()
moto_server._target_groups_created_once()

REGION = "us-east-1"


@mock_aws
class Route53Changes(unittest.TestCase):
    def setUp(self):
        self.r53 = boto3.client("route53", region_name=REGION)
        self.zone = self.r53.create_hosted_zone(Name="arrakis.community", CallerReference="t")["HostedZone"]["Id"]

    def change(self, name):
        return self.r53.change_resource_record_sets(
            HostedZoneId=self.zone,
            ChangeBatch={"Changes": [{"Action": "UPSERT", "ResourceRecordSet": {
                "Name": name, "Type": "A", "TTL": 60, "ResourceRecords": [{"Value": "10.0.0.1"}]}}]},
        )

    def test_the_change_is_applied_and_its_answer_has_no_change_info(self):
        answer = self.change("dixie-armitage.arrakis.community")
        self.assertNotIn("ChangeInfo", answer)
        names = [r["Name"] for r in self.r53.list_resource_record_sets(HostedZoneId=self.zone)["ResourceRecordSets"]]
        self.assertIn("dixie-armitage.arrakis.community.", names)

    def test_the_delay_file_holds_the_answer_back_and_a_bad_one_is_no_delay(self):
        with tempfile.TemporaryDirectory() as ring:
            old = moto_server.RING_DIR
            moto_server.RING_DIR = Path(ring)
            try:
                (Path(ring) / "route53-delay-ms").write_text("300\n")
                started = time.monotonic()
                self.change("a.arrakis.community")
                self.assertGreaterEqual(time.monotonic() - started, 0.3)
                (Path(ring) / "route53-delay-ms").write_text("soon")
                self.assertEqual(moto_server._delay(), 0.0)
                os.remove(Path(ring) / "route53-delay-ms")
                self.assertEqual(moto_server._delay(), 0.0)
            finally:
                moto_server.RING_DIR = old


@mock_aws
class TargetGroups(unittest.TestCase):
    def setUp(self):
        self.ec2 = boto3.client("ec2", region_name=REGION)
        self.vpc = self.ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        self.elb = boto3.client("elbv2", region_name=REGION)

    def create(self, port=3001, vpc=None):
        return self.elb.create_target_group(
            Name="dixie-armitage", Protocol="HTTP", Port=port, VpcId=vpc or self.vpc, TargetType="ip",
        )["TargetGroups"][0]["TargetGroupArn"]

    def test_the_same_create_twice_answers_the_same_group(self):
        first = self.create()
        self.assertEqual(self.create(), first)
        self.assertEqual(len(self.elb.describe_target_groups()["TargetGroups"]), 1)

    def test_the_same_name_with_other_settings_is_still_a_duplicate(self):
        self.create()
        other_vpc = self.ec2.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
        for kwargs in ({"port": 3002}, {"vpc": other_vpc}):
            with self.assertRaises(ClientError) as refused:
                self.create(**kwargs)
            self.assertEqual(refused.exception.response["Error"]["Code"], "DuplicateTargetGroupName")


if __name__ == "__main__":
    unittest.main()
