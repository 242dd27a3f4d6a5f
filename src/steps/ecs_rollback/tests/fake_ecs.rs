//! A stand-in for the few ECS calls a rollback makes (AWS JSON 1.1 on 127.0.0.1), with one
//! service whose tasks start and stop at once, and Dixie's health on `/api/health`: healthy
//! while a task runs, 503 while none does. It keeps the service's state, so a test can put it
//! where a killed run left it, and the mutating calls it answered.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

pub(super) const FAMILY: &str = "dixie-armitage";
const TARGET_PREFIX: &str = "AmazonEC2ContainerServiceV20141113.";

/// The service and its family as the stand-in holds them.
#[derive(Debug, Clone)]
pub(super) struct EcsState {
    /// The family's ACTIVE revisions, in the order `ListTaskDefinitions` answers them.
    pub(super) revisions: Vec<u32>,
    pub(super) revision: u32,
    pub(super) desired: i32,
    pub(super) running: i32,
    pub(super) deployment: u32,
    /// When the primary deployment started, in seconds since the epoch.
    pub(super) started: f64,
    pub(super) tags: BTreeMap<String, String>,
    /// The mutating calls answered, as `Operation {request body}`.
    pub(super) changes: Vec<String>,
}

impl EcsState {
    /// A service on `revision` of revisions `revisions` (listed in that order), with `desired`
    /// tasks running, deployed a minute ago.
    pub(super) fn new(revisions: &[u32], revision: u32, desired: i32) -> Self {
        EcsState {
            revisions: revisions.to_vec(),
            revision,
            desired,
            running: desired,
            deployment: 1,
            started: now() - 60.0,
            tags: BTreeMap::new(),
            changes: Vec::new(),
        }
    }
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

pub(super) struct FakeEcs {
    pub(super) addr: SocketAddr,
    pub(super) state: Arc<Mutex<EcsState>>,
}

impl FakeEcs {
    pub(super) async fn start(state: EcsState) -> FakeEcs {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(state));
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let Some((head, body)) = read_request(&mut conn).await else { return };
                    let (status, reply) = answer(&mut state.lock().unwrap(), &head, &body);
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/x-amz-json-1.1\r\ncontent-length: {}\r\n\
                         connection: close\r\n\r\n{reply}",
                        reply.len()
                    );
                    let _ = conn.write_all(response.as_bytes()).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        FakeEcs { addr, state }
    }

    pub(super) fn health_url(&self) -> String {
        format!("http://{}/api/health", self.addr)
    }

    /// The mutating calls answered since the last call, as `Operation {body}`.
    pub(super) fn changes(&self) -> Vec<String> {
        std::mem::take(&mut self.state.lock().unwrap().changes)
    }

    pub(super) fn with<T>(&self, f: impl FnOnce(&mut EcsState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }
}

/// The request's head (lower-cased) and body.
async fn read_request(conn: &mut tokio::net::TcpStream) -> Option<(String, String)> {
    let (head, body) = crate::notify::tests::read_request(conn).await?;
    Some((head.to_ascii_lowercase(), body))
}

fn answer(s: &mut EcsState, head: &str, body: &str) -> (u16, String) {
    if head.starts_with("get /api/health") {
        return health(s);
    }
    let op = head
        .lines()
        .find_map(|l| l.strip_prefix("x-amz-target:"))
        .and_then(|t| t.trim().strip_prefix(&TARGET_PREFIX.to_ascii_lowercase()))
        .unwrap_or_default()
        .to_string();
    let request: Value = serde_json::from_str(body).unwrap_or_default();
    let reply = match op.as_str() {
        "describeservices" => describe_services(s),
        "listtagsforresource" => {
            json!({"tags": s.tags.iter().map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>()})
        }
        "listtaskdefinitions" => json!({"taskDefinitionArns": s.revisions.iter().map(|r| arn(*r)).collect::<Vec<_>>()}),
        "describetaskdefinition" => {
            let revision = request["taskDefinition"].as_str().and_then(|t| t.rsplit(':').next()).unwrap_or("0");
            json!({"taskDefinition": {"family": FAMILY, "revision": revision.parse::<u32>().unwrap_or(0),
                "containerDefinitions": [{"name": "dixie", "image": format!("repo/dixie:tag-{revision}")}],
                "registeredAt": 1_795_644_293.0}})
        }
        "tagresource" => {
            for tag in request["tags"].as_array().into_iter().flatten() {
                let (k, v) = (tag["key"].as_str().unwrap_or_default(), tag["value"].as_str().unwrap_or_default());
                s.tags.insert(k.to_string(), v.to_string());
            }
            s.changes.push(format!("TagResource {}", request["tags"]));
            json!({})
        }
        "updateservice" => update_service(s, &request),
        other => return (400, json!({"__type": "UnknownOperationException", "message": other}).to_string()),
    };
    (200, reply.to_string())
}

fn arn(revision: u32) -> String {
    format!("arn:aws:ecs:us-east-1:000000000000:task-definition/{FAMILY}:{revision}")
}

fn describe_services(s: &EcsState) -> Value {
    json!({"services": [{
        "serviceArn": "arn:aws:ecs:us-east-1:000000000000:service/c/dixie-armitage",
        "serviceName": "dixie-armitage",
        "status": "ACTIVE",
        "taskDefinition": arn(s.revision),
        "desiredCount": s.desired,
        "runningCount": s.running,
        "deployments": [{"id": format!("ecs-svc/{}", s.deployment), "status": "PRIMARY",
            "taskDefinition": arn(s.revision), "desiredCount": s.desired, "runningCount": s.running,
            "rolloutState": "COMPLETED", "createdAt": s.started}],
        "events": []
    }], "failures": []})
}

/// Tasks stop and start at once; a new task definition or a forced deployment starts a new
/// deployment now.
fn update_service(s: &mut EcsState, request: &Value) -> Value {
    let mut call = request.clone();
    if let Some(object) = call.as_object_mut() {
        object.remove("cluster");
        object.remove("service");
    }
    s.changes.push(format!("UpdateService {call}"));
    if let Some(desired) = request["desiredCount"].as_i64() {
        s.desired = desired as i32;
        s.running = desired as i32;
    }
    if let Some(revision) = request["taskDefinition"].as_str().and_then(|t| t.rsplit(':').next()) {
        s.revision = revision.parse().unwrap_or(0);
    }
    if request["forceNewDeployment"] == true || request["taskDefinition"].is_string() {
        s.deployment += 1;
        s.started = now() - 1.0;
    }
    json!({"service": {"serviceName": "dixie-armitage"}})
}

fn health(s: &EcsState) -> (u16, String) {
    if s.running == 0 {
        return (503, json!({"message": "no task"}).to_string());
    }
    let body = json!({"status": "healthy", "uptime_seconds": 0,
        "services": {"dixie": {"status": "healthy"}, "loa_finn": {"status": "healthy", "circuit_state": "closed"}},
        "infrastructure": {"postgresql": {"status": "healthy"}, "redis": {"status": "healthy"},
            "nats": {"status": "healthy"}}});
    (200, body.to_string())
}
