//! Workarounds for the AWS emulator (moto) of the local ring, in one place, each saying what
//! moto does differently. Nothing here is ever used against AWS: callers check that the
//! environment is an emulator's (`[aws.emulator_credentials]`) or that the runbook named the
//! ring's registry (`push_registry`).
//!
//! Beside these, two differences are handled where they occur, because AWS needs the same
//! code path: moto answers a tag clash in ECR with `ImageAlreadyExistsException` where ECR says
//! `ImageTagAlreadyExistsException` (`steps/image.rs` accepts both), and moto reads
//! SecureStrings undecrypted as `kms:alias/aws/ssm:<value>` (every read decrypts).

use crate::environment::Environment;

/// `ecs:DescribeTasks` against moto, as (group, lastStatus, private IPv4) per task. moto
/// answers `containers[].cpu` and `memory` as numbers where the API has strings, and the SDK
/// refuses the whole response; on an emulator the JSON is read directly (moto does not check
/// signatures). Never used against AWS.
pub(crate) async fn describe_tasks(
    env: &Environment,
    cluster: &str,
    arns: &[String],
) -> Result<Vec<(String, String, Option<String>)>, String> {
    let endpoint = env.aws.endpoint_url.clone().unwrap_or_default();
    let url = reqwest::Url::parse(&endpoint).map_err(|e| format!("endpoint_url {endpoint} in [aws]: {e}"))?;
    let addr = env
        .dial(url.host_str().unwrap_or_default(), url.port_or_known_default().unwrap_or(80))
        .map_err(|why| format!("{why} (see [address_map])"))?;
    let body: serde_json::Value = reqwest::Client::new()
        .post(format!("http://{addr}/"))
        .header("X-Amz-Target", "AmazonEC2ContainerServiceV20141113.DescribeTasks")
        .header("Content-Type", "application/x-amz-json-1.1")
        .header(
            "Authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential=testing/20260101/{}/ecs/aws4_request, SignedHeaders=host, Signature=0",
                env.region
            ),
        )
        .json(&serde_json::json!({ "cluster": cluster, "tasks": arns }))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| format!("ecs:DescribeTasks (emulator): {e}"))?
        .json()
        .await
        .map_err(|e| format!("ecs:DescribeTasks (emulator): {e}"))?;
    Ok(body["tasks"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|t| {
            let ip = t["attachments"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|a| a["details"].as_array().cloned().unwrap_or_default())
                .find(|d| d["name"] == "privateIPv4Address")
                .and_then(|d| d["value"].as_str().map(String::from));
            (
                t["group"].as_str().unwrap_or_default().to_string(),
                t["lastStatus"].as_str().unwrap_or_default().to_string(),
                ip,
            )
        })
        .collect())
}

/// The image manifest that the ring's registry holds for `repository:tag`. moto's ECR is not a
/// registry (`/v2/` is 404): the image is pushed to the ring's registry and ECR learns the tag
/// by `PutImage` of this very manifest.
pub(crate) async fn registry_manifest(
    env: &Environment,
    registry: &str,
    repository: &str,
    tag: &str,
    media_type: &str,
) -> Result<String, String> {
    let (host, port) =
        registry.rsplit_once(':').and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?))).unwrap_or((registry, 80));
    let addr = env.dial(host, port).map_err(|why| format!("{why} (see [address_map])"))?;
    let url = format!("http://{addr}/v2/{repository}/manifests/{tag}");
    reqwest::Client::new()
        .get(&url)
        .header("Accept", media_type)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| format!("GET {url}: {e}"))?
        .text()
        .await
        .map_err(|e| format!("GET {url}: {e}"))
}
