#!/usr/bin/env python3
"""ring/seed.py: create in moto what the Armitage AWS account had before the sprint.

Idempotent: every resource is looked up by name first and created only if missing,
so it is safe to run again, and after `POST /moto-api/reset` it recreates everything.
It never overwrites a value that is already there (in particular the SSM admin
password: a test that put a wrong value on purpose keeps it until the param is gone).

Reads the PostgreSQL admin password from $RING_DIR/secrets/pg-admin-password
(written by up.sh). Prints one summary line; `-q` prints nothing on success.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import uuid
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError

REPO = Path(__file__).resolve().parent.parent
RING_DIR = Path(os.environ.get("RUNBOOK_RING_DIR") or REPO / ".ring")
ENDPOINT = "http://127.0.0.1:4566"
REGION = "us-east-1"

CLUSTER = "arrakis-staging-cluster"
ZONE = "arrakis.community"
FINN = "loa-finn-armitage"
NATS = "arrakis-staging-nats"
VPC_CIDR = "10.1.0.0/16"
ALB = "arrakis-staging-alb"
RDS = "arrakis-staging-postgres"
ADMIN_PASSWORD_PARAM = "/arrakis/staging/rds/master-password"
FINN_HOST = "finn-armitage.arrakis.community"
# Finn's pre-existing params. DIXIE_BASE_URL is deliberately absent: T2.7 sets it.
FINN_PARAMS = {
    "/loa-finn/armitage/DATABASE_URL": ("SecureString", "postgresql://finn:finn-ring-dummy@arrakis-staging-postgres:5432/finn"),
    "/loa-finn/armitage/NODE_ENV": ("String", "staging"),
    "/loa-finn/armitage/LOG_LEVEL": ("String", "info"),
}


class Seeder:
    def __init__(self) -> None:
        cfg = Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=3, read_timeout=30)
        session = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
        )
        self.c = lambda svc: session.client(svc, endpoint_url=ENDPOINT, config=cfg)
        self.ec2 = self.c("ec2")
        self.created: list[str] = []
        self.present: list[str] = []

    def note(self, created: bool, what: str) -> None:
        (self.created if created else self.present).append(what)

    # --- network -------------------------------------------------------------
    def vpc(self) -> None:
        found = self.ec2.describe_vpcs(Filters=[{"Name": "tag:Name", "Values": ["arrakis-staging-vpc"]}])["Vpcs"]
        if found:
            self.vpc_id = found[0]["VpcId"]
            self.note(False, "vpc")
        else:
            self.vpc_id = self.ec2.create_vpc(
                CidrBlock=VPC_CIDR,
                TagSpecifications=[{"ResourceType": "vpc", "Tags": [{"Key": "Name", "Value": "arrakis-staging-vpc"}]}],
            )["Vpc"]["VpcId"]
            self.note(True, "vpc")
        # Both attributes are needed for awsvpc run-task in moto; setting them is idempotent.
        self.ec2.modify_vpc_attribute(VpcId=self.vpc_id, EnableDnsSupport={"Value": True})
        self.ec2.modify_vpc_attribute(VpcId=self.vpc_id, EnableDnsHostnames={"Value": True})

        self.subnet_ids = []
        for suffix, cidr, az in (("a", "10.1.1.0/24", "us-east-1a"), ("b", "10.1.2.0/24", "us-east-1b")):
            name = f"arrakis-staging-private-{suffix}"
            found = self.ec2.describe_subnets(
                Filters=[{"Name": "tag:Name", "Values": [name]}, {"Name": "vpc-id", "Values": [self.vpc_id]}]
            )["Subnets"]
            if found:
                self.subnet_ids.append(found[0]["SubnetId"])
                self.note(False, name)
            else:
                self.subnet_ids.append(
                    self.ec2.create_subnet(
                        VpcId=self.vpc_id, CidrBlock=cidr, AvailabilityZone=az,
                        TagSpecifications=[{"ResourceType": "subnet", "Tags": [{"Key": "Name", "Value": name}]}],
                    )["Subnet"]["SubnetId"]
                )
                self.note(True, name)

    def security_group(self, name: str, description: str, ingress: list | None = None) -> str:
        found = self.ec2.describe_security_groups(
            Filters=[{"Name": "group-name", "Values": [name]}, {"Name": "vpc-id", "Values": [self.vpc_id]}]
        )["SecurityGroups"]
        if found:
            self.note(False, f"sg {name}")
            return found[0]["GroupId"]
        sg = self.ec2.create_security_group(
            GroupName=name, Description=description, VpcId=self.vpc_id,
            TagSpecifications=[{"ResourceType": "security-group", "Tags": [{"Key": "Name", "Value": name}]}],
        )["GroupId"]
        if ingress:
            self.ec2.authorize_security_group_ingress(GroupId=sg, IpPermissions=ingress)
        self.note(True, f"sg {name}")
        return sg

    def security_groups(self) -> None:
        self.alb_sg = self.security_group(
            "arrakis-staging-alb-sg", "arrakis staging ALB",
            [{"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}],
        )
        self.tasks_sg = self.security_group(
            "arrakis-staging-ecs-tasks", "arrakis staging ECS tasks",
            [{"IpProtocol": "tcp", "FromPort": 3000, "ToPort": 3000, "UserIdGroupPairs": [{"GroupId": self.alb_sg}]}],
        )
        # The NATS SG admits the existing tasks only; the Dixie -> NATS rule is a later step's job.
        self.nats_sg = self.security_group(
            "arrakis-staging-nats-sg", "arrakis staging NATS",
            [{"IpProtocol": "tcp", "FromPort": 4222, "ToPort": 4222, "UserIdGroupPairs": [{"GroupId": self.tasks_sg}]}],
        )
        self.dixie_sg = self.security_group("dixie-armitage-sg", "Dixie armitage tasks")
        # RDS and Redis admit the VPC's range, as Armitage's did (sprint 2 reached both there).
        self.rds_sg = self.security_group(
            "arrakis-staging-rds-sg", "arrakis staging RDS",
            [{"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432, "IpRanges": [{"CidrIp": VPC_CIDR}]}],
        )
        self.redis_sg = self.security_group(
            "arrakis-staging-redis-sg", "arrakis staging Redis",
            [{"IpProtocol": "tcp", "FromPort": 6379, "ToPort": 6379, "IpRanges": [{"CidrIp": VPC_CIDR}]}],
        )

    # --- certificate, ALB, DNS -----------------------------------------------
    def certificate(self) -> None:
        acm = self.c("acm")
        for page in acm.get_paginator("list_certificates").paginate():
            for cert in page["CertificateSummaryList"]:
                if cert.get("DomainName") == f"*.{ZONE}":
                    self.cert_arn = cert["CertificateArn"]
                    self.note(False, "acm cert")
                    return
        cert_pem, key_pem = self_signed(f"*.{ZONE}")
        self.cert_arn = acm.import_certificate(Certificate=cert_pem, PrivateKey=key_pem)["CertificateArn"]
        self.note(True, "acm cert")

    def load_balancer(self) -> None:
        elb = self.c("elbv2")
        try:
            lb = elb.describe_load_balancers(Names=[ALB])["LoadBalancers"][0]
            self.note(False, "alb")
        except ClientError as e:
            if e.response["Error"]["Code"] != "LoadBalancerNotFound":
                raise
            lb = elb.create_load_balancer(
                Name=ALB, Subnets=self.subnet_ids, SecurityGroups=[self.alb_sg],
                Scheme="internet-facing", Type="application", IpAddressType="ipv4",
            )["LoadBalancers"][0]
            self.note(True, "alb")
        self.lb = lb

        try:
            tg = elb.describe_target_groups(Names=[FINN])["TargetGroups"][0]
            self.note(False, "tg")
        except ClientError as e:
            if e.response["Error"]["Code"] != "TargetGroupNotFound":
                raise
            tg = elb.create_target_group(
                Name=FINN, Protocol="HTTP", Port=3000, VpcId=self.vpc_id, TargetType="ip",
                HealthCheckPath="/health", Matcher={"HttpCode": "200"},
            )["TargetGroups"][0]
            self.note(True, "tg")
        self.finn_tg = tg["TargetGroupArn"]

        listeners = elb.describe_listeners(LoadBalancerArn=lb["LoadBalancerArn"])["Listeners"]
        https = [l for l in listeners if l["Port"] == 443]
        if https:
            listener = https[0]["ListenerArn"]
            self.note(False, "listener")
        else:
            listener = elb.create_listener(
                LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTPS", Port=443,
                SslPolicy="ELBSecurityPolicy-TLS13-1-2-2021-06",
                Certificates=[{"CertificateArn": self.cert_arn}],
                DefaultActions=[{
                    "Type": "fixed-response",
                    "FixedResponseConfig": {"StatusCode": "404", "ContentType": "text/plain", "MessageBody": "no route"},
                }],
            )["Listeners"][0]["ListenerArn"]
            self.note(True, "listener")
        self.listener_arn = listener

        rules = elb.describe_rules(ListenerArn=listener)["Rules"]
        if any(r["Priority"] == "210" for r in rules):
            self.note(False, "rule 210")
        else:
            elb.create_rule(
                ListenerArn=listener, Priority=210,
                Conditions=[{"Field": "host-header", "HostHeaderConfig": {"Values": [FINN_HOST]}}],
                Actions=[{"Type": "forward", "TargetGroupArn": self.finn_tg}],
            )
            self.note(True, "rule 210")

    def dns(self) -> None:
        r53 = self.c("route53")
        zones = [z for z in r53.list_hosted_zones_by_name(DNSName=ZONE)["HostedZones"] if z["Name"] == ZONE + "."]
        if zones:
            zone_id = zones[0]["Id"]
            self.note(False, "zone")
        else:
            zone_id = r53.create_hosted_zone(Name=ZONE, CallerReference=str(uuid.uuid4()))["HostedZone"]["Id"]
            self.note(True, "zone")
        records = r53.list_resource_record_sets(HostedZoneId=zone_id)["ResourceRecordSets"]
        if any(r["Name"] == FINN_HOST + "." and r["Type"] == "A" for r in records):
            self.note(False, "finn A")
            return
        r53.change_resource_record_sets(HostedZoneId=zone_id, ChangeBatch={"Changes": [{
            "Action": "CREATE",
            "ResourceRecordSet": {
                "Name": FINN_HOST, "Type": "A",
                "AliasTarget": {
                    "HostedZoneId": self.lb["CanonicalHostedZoneId"],
                    "DNSName": self.lb["DNSName"],
                    "EvaluateTargetHealth": False,
                },
            },
        }]})
        self.note(True, "finn A")

    # --- SSM, RDS ----------------------------------------------------------
    def put_if_absent(self, ssm, name: str, kind: str, value: str, label: str) -> None:
        try:
            ssm.get_parameter(Name=name)
            self.note(False, label)
        except ClientError as e:
            if e.response["Error"]["Code"] != "ParameterNotFound":
                raise
            ssm.put_parameter(Name=name, Type=kind, Value=value)
            self.note(True, label)

    def parameters(self) -> None:
        ssm = self.c("ssm")
        self.put_if_absent(ssm, ADMIN_PASSWORD_PARAM, "SecureString", self.admin_password, "ssm admin password")
        for name, (kind, value) in FINN_PARAMS.items():
            self.put_if_absent(ssm, name, kind, value, f"ssm {name.rsplit('/', 1)[1]}")

    def database(self) -> None:
        rds = self.c("rds")
        try:
            rds.describe_db_subnet_groups(DBSubnetGroupName="arrakis-staging-db")
        except ClientError as e:
            if e.response["Error"]["Code"] != "DBSubnetGroupNotFoundFault":
                raise
            rds.create_db_subnet_group(
                DBSubnetGroupName="arrakis-staging-db", DBSubnetGroupDescription="arrakis staging RDS",
                SubnetIds=self.subnet_ids,
            )
        try:
            rds.describe_db_instances(DBInstanceIdentifier=RDS)
            self.note(False, "rds")
        except ClientError as e:
            if e.response["Error"]["Code"] != "DBInstanceNotFound":
                raise
            rds.create_db_instance(
                DBInstanceIdentifier=RDS, Engine="postgres", EngineVersion="15",
                DBInstanceClass="db.t3.micro", AllocatedStorage=20,
                MasterUsername="arrakis_admin", MasterUserPassword=self.admin_password, Port=5432,
                DBSubnetGroupName="arrakis-staging-db", PubliclyAccessible=False,
                VpcSecurityGroupIds=[self.rds_sg],
            )
            self.note(True, "rds")

    # --- ECS -----------------------------------------------------------------
    def cluster(self) -> None:
        ecs = self.c("ecs")
        active = [c for c in ecs.describe_clusters(clusters=[CLUSTER])["clusters"] if c["status"] == "ACTIVE"]
        if active:
            self.note(False, "cluster")
        else:
            ecs.create_cluster(clusterName=CLUSTER)
            self.note(True, "cluster")

    def service(self, name: str, container: str, image: str, port: int, sg: str,
                secrets: list | None = None, target_group: str | None = None) -> None:
        ecs = self.c("ecs")
        existing = [s for s in ecs.describe_services(cluster=CLUSTER, services=[name])["services"]
                    if s["status"] == "ACTIVE"]
        if existing:
            self.note(False, f"svc {name}")
            return
        try:
            td = ecs.describe_task_definition(taskDefinition=name)["taskDefinition"]["taskDefinitionArn"]
        except ClientError:
            td = ecs.register_task_definition(
                family=name, networkMode="awsvpc", requiresCompatibilities=["FARGATE"],
                cpu="256", memory="512",
                executionRoleArn="arn:aws:iam::123456789012:role/arrakis-staging-ecs-execution",
                containerDefinitions=[{
                    "name": container, "image": image, "essential": True,
                    "memory": 512,  # moto quirk: awsvpc run-task needs memory on every container
                    "portMappings": [{"containerPort": port, "protocol": "tcp"}],
                    "secrets": secrets or [],
                }],
            )["taskDefinition"]["taskDefinitionArn"]
        kwargs = {}
        if target_group:
            kwargs["loadBalancers"] = [{"targetGroupArn": target_group, "containerName": container, "containerPort": port}]
        ecs.create_service(
            cluster=CLUSTER, serviceName=name, taskDefinition=td, desiredCount=1, launchType="FARGATE",
            networkConfiguration={"awsvpcConfiguration": {
                "subnets": self.subnet_ids, "securityGroups": [sg], "assignPublicIp": "DISABLED"}},
            **kwargs,
        )
        self.note(True, f"svc {name}")

    def restart_nats(self) -> str:
        """Stop the NATS service's running task and start another, as ECS does when a task
        dies: the new task has a new private address (001's risk note), so a NATS_URL written
        before names no task any more. Returns the new address."""
        self.vpc()
        self.security_groups()
        ecs = self.c("ecs")
        running = ecs.list_tasks(cluster=CLUSTER, desiredStatus="RUNNING")["taskArns"]
        old = [t for t in (ecs.describe_tasks(cluster=CLUSTER, tasks=running)["tasks"] if running else [])
               if t.get("group") == f"service:{NATS}" and t.get("lastStatus") == "RUNNING"]
        for task in old:
            ecs.stop_task(cluster=CLUSTER, task=task["taskArn"], reason="ring: NATS task restarted")
        self.tasks()
        return ", ".join(nats_addresses(ecs)) or "none"

    def tasks(self) -> None:
        """One RUNNING task per service, as on the real cluster (T2.5 reads the NATS task's IP).

        moto's services start no task objects, and by default a task turns STOPPED on its
        first describe ("immediate" progression): pin ecs::task to manual progression so a
        task stays RUNNING until someone stops it, as on AWS.
        """
        import urllib.request
        body = json.dumps({"model_name": "ecs::task",
                           "transition": {"progression": "manual", "times": 1_000_000_000}}).encode()
        urllib.request.urlopen(urllib.request.Request(
            f"{ENDPOINT}/moto-api/state-manager/set-transition", data=body, method="POST"), timeout=10).read()
        ecs = self.c("ecs")
        running = ecs.list_tasks(cluster=CLUSTER, desiredStatus="RUNNING")["taskArns"]
        groups = set()
        if running:
            groups = {t.get("group") for t in ecs.describe_tasks(cluster=CLUSTER, tasks=running)["tasks"]
                      if t.get("lastStatus") == "RUNNING"}
        for name, sg in ((FINN, self.tasks_sg), (NATS, self.nats_sg)):
            if f"service:{name}" in groups:
                self.note(False, f"task {name}")
                continue
            svc = ecs.describe_services(cluster=CLUSTER, services=[name])["services"][0]
            ecs.run_task(
                cluster=CLUSTER, taskDefinition=svc["taskDefinition"], count=1, launchType="FARGATE",
                group=f"service:{name}", startedBy=f"ecs-svc/{svc['deployments'][0]['id'].rsplit('/', 1)[-1][-19:]}"
                if svc.get("deployments") else "ecs-svc/ring",
                # moto answers 500 (KeyError) for awsvpc without securityGroups
                networkConfiguration={"awsvpcConfiguration": {
                    "subnets": self.subnet_ids, "securityGroups": [sg], "assignPublicIp": "DISABLED"}},
            )
            self.note(True, f"task {name}")

    def services(self) -> None:
        ssm_arn = f"arn:aws:ssm:{REGION}:123456789012:parameter"
        self.service(
            FINN, "loa-finn", "123456789012.dkr.ecr.us-east-1.amazonaws.com/loa-finn-armitage:ring", 3000,
            self.tasks_sg, target_group=self.finn_tg,
            secrets=[{"name": n.rsplit("/", 1)[1], "valueFrom": f"{ssm_arn}{n}"} for n in FINN_PARAMS],
        )
        self.service(NATS, "nats", "nats:2.10-alpine", 4222, self.nats_sg)

    def state_bucket(self) -> None:
        """The S3 bucket of terraform's backend (the real repo keeps its state in S3)."""
        s3 = self.c("s3")
        names = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        if "runbook-terraform-state" in names:
            self.note(False, "s3 runbook-terraform-state")
            return
        s3.create_bucket(Bucket="runbook-terraform-state")
        self.note(True, "s3 runbook-terraform-state")

    def run(self) -> None:
        pw_file = RING_DIR / "secrets" / "pg-admin-password"
        try:
            self.admin_password = pw_file.read_text().strip()
        except FileNotFoundError:
            sys.exit(f"seed: ERROR: {pw_file} is missing: run ring/up.sh (it generates the admin password)")
        self.vpc()
        self.security_groups()
        self.certificate()
        self.load_balancer()
        self.dns()
        self.parameters()
        self.database()
        self.cluster()
        self.services()
        self.tasks()
        self.state_bucket()


def nats_addresses(ecs) -> list[str]:
    """The private addresses of the NATS service's RUNNING tasks."""
    running = ecs.list_tasks(cluster=CLUSTER, desiredStatus="RUNNING")["taskArns"]
    tasks = ecs.describe_tasks(cluster=CLUSTER, tasks=running)["tasks"] if running else []
    return [d["value"] for t in tasks if t.get("group") == f"service:{NATS}" and t.get("lastStatus") == "RUNNING"
            for a in t.get("attachments", []) for d in a.get("details", []) if d.get("name") == "privateIPv4Address"]


def self_signed(cn: str) -> tuple[bytes, bytes]:
    """A self-signed certificate for ACM import (moto's ELBv2 wants a known cert ARN)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn), x509.DNSName(ZONE)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                          serialization.NoEncryption()),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    ap.add_argument("--json", action="store_true", help="print created/present lists as JSON")
    ap.add_argument("--reset", action="store_true",
                    help="POST /moto-api/reset first (overlapped with building the clients)")
    ap.add_argument("--github-token", action="store_true",
                    help="then put the GitHub stand-in's token into SSM, as ring/github_token.py does")
    ap.add_argument("--restart-nats", action="store_true",
                    help="only restart the NATS service's task (it comes back with a new address)")
    args = ap.parse_args()
    lock = None
    if os.environ.get("RING_LOCK_HELD") != "1":  # up.sh/reset.sh already hold it for us
        import fcntl
        RING_DIR.mkdir(parents=True, exist_ok=True)
        lock = open(RING_DIR / "ring.lock", "w")
        fcntl.flock(lock, fcntl.LOCK_EX)
    reset_error: list[str] = []
    resetter = None
    if args.reset:
        import threading
        import urllib.request

        def reset() -> None:
            try:
                urllib.request.urlopen(urllib.request.Request(
                    f"{ENDPOINT}/moto-api/reset", method="POST"), timeout=60).read()
            except Exception as e:  # reported below, in the main thread
                reset_error.append(str(e))

        resetter = threading.Thread(target=reset)
        resetter.start()
    seeder = Seeder()
    if args.restart_nats:
        print(f"seed: NATS task restarted; its address is now {seeder.restart_nats()}")
        return
    if resetter:
        resetter.join()
        if reset_error:
            sys.exit(f"seed: ERROR: moto reset failed ({reset_error[0]}): is the ring up? run ring/up.sh")
    try:
        seeder.run()
    except EndpointConnectionError:
        sys.exit(f"seed: ERROR: moto is not answering on {ENDPOINT}: start the ring with ring/up.sh")
    except ClientError as e:
        sys.exit(f"seed: ERROR: {e} (see $RING_DIR/logs/moto.log; ring/reset.sh starts from a clean moto)")
    if args.github_token:
        import github_token  # beside this file

        github_token.put(ENDPOINT, quiet=args.quiet)
    if args.json:
        print(json.dumps({"created": seeder.created, "present": seeder.present}))
    elif not args.quiet:
        created = len(seeder.created)
        detail = f" ({', '.join(seeder.created)})" if 0 < created < len(seeder.created) + len(seeder.present) else ""
        print(f"seed: {created} created, {len(seeder.present)} already present{detail}")


if __name__ == "__main__":
    main()
