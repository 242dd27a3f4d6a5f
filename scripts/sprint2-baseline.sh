#!/usr/bin/env bash
# scripts/sprint2-baseline.sh: Sprint 2 of the deployment plan (shared/seeds/001_…, T2.1–T2.8)
# as the sequential shell script an engineer would paste, run against the local ring.
#
# This is the *baseline* of scripts/bench (docs/performance.md), not a way to deploy: the
# commands are the plan's own (aws CLI v1, docker, psql, terraform), adapted only where the
# ring requires it. Every adaptation is marked "RING:". Run it on a fresh ring
# (`bash ring/reset.sh`), holding the ring's user lock:
#
#   flock .ring/user.lock bash ring/reset.sh && flock .ring/user.lock scripts/sprint2-baseline.sh
#
# It times its own phases and prints, machine-readable, on stdout:
#   phase=terraform seconds=<float>   terraform init + workspace + plan + apply (+ output)
#   phase=image seconds=<float>       docker build/tag/login/push + ECR put-image
#   phase=other seconds=<float>       everything else: aws calls, SQL, waits, curls, bash
#   total seconds=<float>
# "other" is total - terraform - image, so the script's own overhead counts there too.
#
# It ends in the state `runbook run sprint-2` produces (ECR repo + lifecycle policy, image in
# the registry and in ECR, database/role dixie with the role's password in SSM where the
# runbook keeps it, terraform applied in workspace armitage, the 8 params, Dixie and Finn
# redeployed and healthy), so a later `runbook run sprint-2` finds every step satisfied.
set -euo pipefail
export LC_ALL=C # EPOCHREALTIME with a decimal point

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RING_DIR="${RUNBOOK_RING_DIR:-$REPO/.ring}"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sprint2-baseline.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# ---- timing ------------------------------------------------------------------------------
T0=${EPOCHREALTIME/./}
T_terraform=0
T_image=0
_s=0
begin() { _s=${EPOCHREALTIME/./}; }
end() { local now=${EPOCHREALTIME/./}; eval "T_$1=\$(( T_$1 + now - _s ))"; }
secs() { awk -v u="$1" 'BEGIN { printf "%.3f", u / 1e6 }'; }
log() { printf '\n### %s\n' "$*"; }

# What sprint 2 accepts of Dixie's health (runbooks/sprint-2.toml, T2.6/T2.8): healthy, or
# degraded for want of NATS alone (the NATS security group has no rule for Dixie until sprint
# 3's T3.1), with PostgreSQL and Redis healthy and Finn's circuit closed.
SPRINT2_OK='.services.loa_finn.circuit_state == "closed"
  and .infrastructure.postgresql.status == "healthy" and .infrastructure.redis.status == "healthy"
  and (.status == "healthy"
       or (.status == "degraded" and (.infrastructure.nats.status // "absent") != "connected"))'

# Bounded poll of an HTTP JSON endpoint until a jq filter is true.
# RING: `aws ecs wait services-stable` returns at once on moto (it only counts tasks), and
# the ring has no ALB whose health check the waiter would wait for; the ring's ECS agent
# restarts the stand-in a moment later. So the script waits for the new task itself.
wait_json() { # URL JQ-FILTER LIMIT-SECONDS
  local deadline=$(( $(date +%s) + $3 )) body=""
  while :; do
    body=$(curl -s -m 2 "$1" || true)
    if [ -n "$body" ] && jq -e "$2" >/dev/null 2>&1 <<<"$body"; then
      printf '%s\n' "$body"
      return 0
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      printf 'sprint2-baseline: %s did not satisfy %s within %ss; last answer: %s\n' "$1" "$2" "$3" "${body:-none}" >&2
      return 1
    fi
    sleep 0.25
  done
}

# ---- the ring's environment --------------------------------------------------------------
# RING: moto stands in for the account; it accepts any keys.
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
export AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:4566
export AWS_PAGER=""
# A private CLI config: aws CLI v1 fetches any parameter value that starts with http:// or
# https:// unless cli_follow_urlparam is false (T2.5's URLs), and we do not touch ~/.aws.
export AWS_CONFIG_FILE="$WORK/aws-config" AWS_SHARED_CREDENTIALS_FILE="$WORK/aws-credentials"
aws configure set cli_follow_urlparam false
# RING: the ring's dockerd on its own socket; a private docker config for `docker login`.
export DOCKER_HOST="unix://$RING_DIR/docker.sock"
export DOCKER_CONFIG="$WORK/docker"
export DOCKER_BUILDKIT=0 # dockerd 20.10 without buildx: the classic builder (as runbook's bollard)
# RING: terraform from the machine's provider mirror, the provider reaches moto through
# AWS_ENDPOINT_URL; its own data dir so that runbook's .terraform is not disturbed.
export TF_CLI_CONFIG_FILE="$RING_DIR/terraformrc"
export TF_DATA_DIR="${BASELINE_TF_DATA_DIR:-$WORK/tf-data}"
export TF_IN_AUTOMATION=1

APP="$REPO/fixtures/dixie"              # the app checkout (loa-dixie on AWS)
REGISTRY=127.0.0.1:5000                 # RING: moto's ECR is not a registry
CLUSTER=arrakis-staging-cluster
SSM_PREFIX="/dixie/armitage"

# ---- T2.1: Create ECR repository ---------------------------------------------------------
log "T2.1 Create ECR repository"
aws ecr create-repository \
  --repository-name dixie-armitage \
  --image-scanning-configuration scanOnPush=true \
  --image-tag-mutability IMMUTABLE \
  --region us-east-1

aws ecr put-lifecycle-policy \
  --repository-name dixie-armitage \
  --lifecycle-policy-text '{"rules":[{"rulePriority":1,"description":"Keep last 10","selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":10},"action":{"type":"expire"}}]}'

# ---- T2.2: Build & push Docker image -----------------------------------------------------
log "T2.2 Build and push Docker image"
IMAGE_TAG=${IMAGE_TAG:-$(git -C "$APP" rev-parse --short HEAD)} # scripts/bench pins it
ECR_URL=$(aws ecr describe-repositories --repository-names dixie-armitage \
  --query 'repositories[0].repositoryUri' --output text) # 123456789012.dkr.ecr… on moto
PUSH_URL="$REGISTRY/dixie-armitage" # RING: pushes go to the ring's registry

begin
# The plan: docker build -f deploy/Dockerfile -t dixie-armitage . (in the app checkout).
docker build -f "$APP/Dockerfile" -t dixie-armitage "$APP"
docker tag dixie-armitage:latest "${PUSH_URL}:${IMAGE_TAG}"
# Not in the plan: the local tag runbook's T2.2 keeps (its probe compares it with ECR's digest).
docker tag dixie-armitage:latest "dixie-armitage:${IMAGE_TAG}"

# RING: the ring's registry takes the login (it has no auth); moto's ECR host does not resolve.
aws ecr get-login-password --region us-east-1 | \
  docker login --username AWS --password-stdin "$REGISTRY"

docker push "${PUSH_URL}:${IMAGE_TAG}"

# RING: moto's ECR learns the tag from the registry's manifest (real ECR is the registry).
MANIFEST=$(curl -sf -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
  "http://$REGISTRY/v2/dixie-armitage/manifests/${IMAGE_TAG}")
aws ecr put-image --repository-name dixie-armitage --image-tag "${IMAGE_TAG}" \
  --image-manifest "$MANIFEST" \
  --image-manifest-media-type application/vnd.docker.distribution.manifest.v2+json \
  --query 'image.imageId' --output text
end image
echo "image: ${ECR_URL}:${IMAGE_TAG}"

# ---- T2.3: Create database on RDS --------------------------------------------------------
log "T2.3 Create database on RDS"
# 1. Discover the RDS endpoint. RING: aws CLI v1's `rds` ignores AWS_ENDPOINT_URL.
RDS_ENDPOINT=$(aws rds describe-db-instances --endpoint-url "$AWS_ENDPOINT_URL" \
  --query 'DBInstances[?contains(DBInstanceIdentifier, `staging`)].Endpoint.Address | [0]' --output text)
RDS_PORT=$(aws rds describe-db-instances --endpoint-url "$AWS_ENDPOINT_URL" \
  --query 'DBInstances[?contains(DBInstanceIdentifier, `staging`)].Endpoint.Port | [0]' --output text)
echo "RDS endpoint: ${RDS_ENDPOINT}:${RDS_PORT}"
# 2. Connect direct. RING: moto's endpoint name does not resolve; the ring's PostgreSQL
#    stands in for it on 127.0.0.1:15432 (runbook's [address_map] does the same).
PGHOST=localhost PGHOSTADDR=127.0.0.1 PGPORT=15432 PGUSER=arrakis_admin PGDATABASE=postgres
# The ring's PostgreSQL takes TLS only, like RDS with force_ssl.
PGSSLMODE=verify-full PGSSLROOTCERT="$RING_DIR/tls/ca.crt"
PGPASSWORD=$(cat "$RING_DIR/secrets/pg-admin-password")
export PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGSSLMODE PGSSLROOTCERT
DB_PASSWORD=$(openssl rand -hex 24) # <generated-password>
# 3. Create database + user.
psql -X -v ON_ERROR_STOP=1 <<SQL
CREATE DATABASE dixie;
CREATE USER dixie WITH PASSWORD '${DB_PASSWORD}';
GRANT ALL PRIVILEGES ON DATABASE dixie TO dixie;
\c dixie
GRANT ALL ON SCHEMA public TO dixie;
SQL
# The plan leaves where the generated password lives to the engineer; keep it where the
# runbook keeps it (runbooks/environments/local.toml: db_password_param), so that both end
# in the same state.
aws ssm put-parameter --name /runbook/armitage/dixie/DB_PASSWORD \
  --value "$DB_PASSWORD" --type SecureString --overwrite

# ---- T2.4: Initialize terraform & apply --------------------------------------------------
log "T2.4 Initialize terraform and apply"
cd "$APP/deploy/terraform"
begin
# RING: the S3 backend is moto's S3 (environments/local.s3.tfbackend), like runbook's T2.4.
terraform init -input=false -backend-config=environments/local.s3.tfbackend
terraform workspace new armitage || terraform workspace select armitage

# Plan with the deployed image tag. RING: environments/local.tfvars.
terraform plan -input=false \
  -var-file=environments/local.tfvars \
  -var="image_tag=${IMAGE_TAG}"

# Review plan, then apply. The script cannot review: -auto-approve.
terraform apply -input=false -auto-approve \
  -var-file=environments/local.tfvars \
  -var="image_tag=${IMAGE_TAG}"

# RING (T2.5's discovery): `aws elasticache describe-replication-groups` has nothing to find
# (create_elasticache = false: the ring's TLS Redis stands in); terraform's output says where.
REDIS_ENDPOINT=$(terraform output -raw redis_endpoint)
REDIS_PORT=$(terraform output -raw redis_port)
end terraform
cd "$REPO"

# ---- T2.5: Seed SSM parameters -----------------------------------------------------------
log "T2.5 Seed SSM parameters"
# 1. Finn URL (via ALB — not Cloud Map)
aws ssm put-parameter --name "${SSM_PREFIX}/FINN_URL" \
  --value "https://finn-armitage.arrakis.community" \
  --type SecureString --overwrite

# 2. Finn WebSocket URL
aws ssm put-parameter --name "${SSM_PREFIX}/FINN_WS_URL" \
  --value "wss://finn-armitage.arrakis.community" \
  --type SecureString --overwrite

# 3. Database URL (from Task 2.3)
aws ssm put-parameter --name "${SSM_PREFIX}/DATABASE_URL" \
  --value "postgresql://dixie:${DB_PASSWORD}@${RDS_ENDPOINT}:${RDS_PORT}/dixie" \
  --type SecureString --overwrite

# 4. Redis URL (TLS endpoint)
aws ssm put-parameter --name "${SSM_PREFIX}/REDIS_URL" \
  --value "rediss://${REDIS_ENDPOINT}:${REDIS_PORT}" \
  --type SecureString --overwrite

# 5. NATS URL (discover from ECS tasks)
# RING: moto's list-tasks ignores --service-name (it lists every task of the cluster), so
# the task is picked by its group from describe-tasks.
NATS_TASKS=$(aws ecs list-tasks --cluster "$CLUSTER" \
  --service-name arrakis-staging-nats --query 'taskArns' --output text)
# shellcheck disable=SC2086 # one argument per task ARN
NATS_IP=$(aws ecs describe-tasks --cluster "$CLUSTER" \
  --tasks ${NATS_TASKS} \
  --query 'tasks[?group==`service:arrakis-staging-nats` && lastStatus==`RUNNING`] | [0].attachments[0].details[?name==`privateIPv4Address`].value | [0]' \
  --output text)
echo "NATS task IP: ${NATS_IP}"
aws ssm put-parameter --name "${SSM_PREFIX}/NATS_URL" \
  --value "nats://${NATS_IP}:4222" \
  --type String --overwrite

# 6. JWT Private Key (generate 64-char secret)
JWT_KEY=$(openssl rand -hex 32)
aws ssm put-parameter --name "${SSM_PREFIX}/DIXIE_JWT_PRIVATE_KEY" \
  --value "${JWT_KEY}" \
  --type SecureString --overwrite

# 7. Admin Key
ADMIN_KEY=$(openssl rand -hex 32)
aws ssm put-parameter --name "${SSM_PREFIX}/DIXIE_ADMIN_KEY" \
  --value "${ADMIN_KEY}" \
  --type SecureString --overwrite

# 8. CORS Origins
aws ssm put-parameter --name "${SSM_PREFIX}/DIXIE_CORS_ORIGINS" \
  --value "https://dixie-armitage.arrakis.community" \
  --type String --overwrite

# ---- T2.6: Force ECS deployment & verify -------------------------------------------------
log "T2.6 Force ECS deployment and verify"
aws ecs update-service \
  --cluster "$CLUSTER" \
  --service dixie-armitage \
  --force-new-deployment \
  --query 'service.deployments[0].id' --output text

# Wait for service to stabilize
aws ecs wait services-stable \
  --cluster "$CLUSTER" \
  --services dixie-armitage

# Check health. RING: no ALB, plain HTTP to the stand-in on loopback; waits (bounded) for
# the redeployed task to answer as sprint 2's policy accepts (see wait_json and SPRINT2_OK).
wait_json http://127.0.0.1:13001/api/health "$SPRINT2_OK" 120 | jq .

# ---- T2.7: Wire Finn → Dixie -------------------------------------------------------------
log "T2.7 Wire Finn to Dixie"
aws ssm put-parameter \
  --name "/loa-finn/armitage/DIXIE_BASE_URL" \
  --value "https://dixie-armitage.arrakis.community" \
  --type SecureString --overwrite

aws ecs update-service \
  --cluster "$CLUSTER" \
  --service loa-finn-armitage \
  --force-new-deployment \
  --query 'service.deployments[0].id' --output text

aws ecs wait services-stable \
  --cluster "$CLUSTER" \
  --services loa-finn-armitage
# RING: wait (bounded) until Finn's new task runs with the parameter (see wait_json).
wait_json http://127.0.0.1:13000/debug/config \
  '.values.DIXIE_BASE_URL == "https://dixie-armitage.arrakis.community"' 120 >/dev/null

# ---- T2.8: End-to-end validation ---------------------------------------------------------
log "T2.8 End-to-end validation"
# 1. DNS resolution. RING: the ring's names do not resolve; Route53 is asked instead.
ZONE_ID=$(aws route53 list-hosted-zones-by-name --dns-name arrakis.community \
  --query 'HostedZones[0].Id' --output text)
aws route53 list-resource-record-sets --hosted-zone-id "$ZONE_ID" \
  --query 'ResourceRecordSets[?Name==`dixie-armitage.arrakis.community.`]' --output json

# 2. Dixie health (should show finn: healthy, circuit_state: closed). RING: see T2.6.
DIXIE_HEALTH=$(wait_json http://127.0.0.1:13001/api/health "$SPRINT2_OK" 60)
jq . <<<"$DIXIE_HEALTH"

# 3. Finn health
curl -sf http://127.0.0.1:13000/health | jq .

# 4. Dixie migrations ran (RING: the stand-in lists _migrations; 13 expected)
curl -sf http://127.0.0.1:13001/api/health/migrations | jq -e '.migrations | length == 13'

# 5. Redis connectivity
jq -e '.infrastructure' <<<"$DIXIE_HEALTH"

# ---- times -------------------------------------------------------------------------------
T_total=$(( ${EPOCHREALTIME/./} - T0 ))
T_other=$(( T_total - T_terraform - T_image ))
echo
echo "phase=terraform seconds=$(secs "$T_terraform")"
echo "phase=image seconds=$(secs "$T_image")"
echo "phase=other seconds=$(secs "$T_other")"
echo "total seconds=$(secs "$T_total")"
