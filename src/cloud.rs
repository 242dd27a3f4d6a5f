//! AWS clients for one environment, and the preflight that proves they reach the right account
//! before any step runs. On the ring every API goes to moto through one endpoint URL.

use aws_config::{BehaviorVersion, Region};
use aws_sdk_ssm::config::Credentials;

mod cloudwatch;
mod ec2;
mod logs;
mod query;
mod rds;
mod route53;

pub(crate) use cloudwatch::CloudWatch;
pub(crate) use ec2::{Ec2, SecurityGroupRule};
pub(crate) use logs::Logs;
pub(crate) use query::QueryError;
pub(crate) use rds::Rds;
pub(crate) use route53::Route53;

use crate::environment::Environment;
use crate::error_chain::error_chain;
use crate::secret::Secret;

pub(crate) struct Cloud {
    /// CloudWatch's, EC2's and RDS's few calls go over the query protocol, Route53's and
    /// CloudWatch Logs' over their own, without their SDK crates (`cloud/query.rs`).
    pub(crate) cloudwatch: CloudWatch,
    pub(crate) ec2: Ec2,
    pub(crate) ecr: aws_sdk_ecr::Client,
    pub(crate) ecs: aws_sdk_ecs::Client,
    /// CloudWatch Logs: read only, by `runbook diagnose` (ERROR lines of the service's group).
    pub(crate) logs: Logs,
    pub(crate) route53: Route53,
    pub(crate) rds: Rds,
    pub(crate) ssm: aws_sdk_ssm::Client,
    sts: aws_sdk_sts::Client,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum CloudError {
    #[error("cannot reach AWS ({endpoint}) as environment {env}: {message}; {fix}")]
    Unreachable { env: String, endpoint: String, message: String, fix: String },
    #[error(
        "AWS kept throttling or failing sts:GetCallerIdentity for environment {env}: {message}; nothing was \
         changed; try again in a minute"
    )]
    Busy { env: String, message: String },
    #[error("AWS refused the credentials for environment {env}: {message}; {fix}")]
    Credentials { env: String, message: String, fix: String },
    #[error(
        "the credentials belong to account {found}, but environment {env} is account {expected}; \
         nothing was changed. Use the credentials (AWS_PROFILE) of account {expected}"
    )]
    WrongAccount { env: String, expected: String, found: String },
}

/// AWS error codes worth another attempt: throttling and the service's own failures (5xx:
/// `InternalFailure`, `InternalError`, `ServiceUnavailable`, …).
pub(crate) fn transient_aws_code(code: &str) -> bool {
    code.contains("Throttl")
        || code == "RequestLimitExceeded"
        || code == "TooManyRequestsException"
        || code == "SlowDown"
        || code.starts_with("Internal")
        || code.starts_with("ServiceUnavailable")
}

/// The endpoint a service's SDK client would use: the environment's `endpoint_url`, else
/// `AWS_ENDPOINT_URL_<SERVICE>`, else the configuration's (`AWS_ENDPOINT_URL`, the profile's);
/// `None` for AWS's own.
fn endpoint(env: &Environment, config: &aws_config::SdkConfig, service: &str) -> Option<String> {
    env.aws.endpoint_url.clone().or_else(|| {
        std::env::var(format!("AWS_ENDPOINT_URL_{service}"))
            .ok()
            .filter(|url| !url.is_empty())
            .or_else(|| config.endpoint_url().map(String::from))
    })
}

impl Cloud {
    pub(crate) async fn connect(env: &Environment) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).region(Region::new(env.region.clone()));
        if let Some(url) = &env.aws.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some(profile) = &env.aws.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(creds) = &env.aws.emulator_credentials {
            loader = loader.credentials_provider(Credentials::new(
                &creds.access_key_id,
                &creds.secret_access_key,
                None,
                None,
                "runbook-emulator",
            ));
        }
        let config = loader.load().await;
        let shared = query::Shared::new(&config);
        Cloud {
            cloudwatch: CloudWatch::new(&shared, endpoint(env, &config, "CLOUDWATCH").as_deref()),
            ec2: Ec2::new(&shared, endpoint(env, &config, "EC2").as_deref()),
            ecr: aws_sdk_ecr::Client::new(&config),
            ecs: aws_sdk_ecs::Client::new(&config),
            logs: Logs::new(&shared, endpoint(env, &config, "CLOUDWATCH_LOGS").as_deref()),
            route53: Route53::new(&shared, endpoint(env, &config, "ROUTE_53").as_deref()),
            rds: Rds::new(&shared, endpoint(env, &config, "RDS").as_deref()),
            ssm: aws_sdk_ssm::Client::new(&config),
            sts: aws_sdk_sts::Client::new(&config),
        }
    }

    /// An SSM parameter's value, decrypted (moto's undecrypted SecureString reads are not
    /// the value), or `None` when it does not exist.
    pub(crate) async fn read_parameter(
        &self,
        name: &str,
    ) -> Result<
        Option<Secret<String>>,
        aws_sdk_ssm::error::SdkError<aws_sdk_ssm::operation::get_parameter::GetParameterError>,
    > {
        match self.ssm.get_parameter().name(name).with_decryption(true).send().await {
            Ok(out) => Ok(out.parameter().and_then(|p| p.value()).map(|v| Secret::new(v.to_string()))),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_parameter_not_found()) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `sts:GetCallerIdentity`, asked again after 1 s and 2 s while AWS throttles or fails.
    async fn caller_identity(
        &self,
    ) -> Result<
        aws_sdk_sts::operation::get_caller_identity::GetCallerIdentityOutput,
        aws_sdk_sts::error::SdkError<aws_sdk_sts::operation::get_caller_identity::GetCallerIdentityError>,
    > {
        use aws_sdk_sts::error::ProvideErrorMetadata;
        let mut pause = std::time::Duration::from_secs(1);
        loop {
            match self.sts.get_caller_identity().send().await {
                Err(e)
                    if pause <= std::time::Duration::from_secs(2)
                        && e.as_service_error().is_some_and(|s| transient_aws_code(s.code().unwrap_or_default())) =>
                {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                other => return other,
            }
        }
    }

    /// `sts:GetCallerIdentity`: the endpoint answers, the credentials work, and they are for
    /// the environment's account.
    pub(crate) async fn preflight(&self, env: &Environment) -> Result<(), CloudError> {
        let endpoint = env.aws.endpoint_url.clone().unwrap_or_else(|| format!("AWS {}", env.region));
        let ring_fix = if env.loopback_only {
            "start the local ring: runbook ring up".to_string()
        } else {
            "check the network and the AWS credential chain (aws sts get-caller-identity)".to_string()
        };
        let identity = self.caller_identity().await.map_err(|e| {
            use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
            match &e {
                SdkError::ServiceError(s) if transient_aws_code(s.err().code().unwrap_or_default()) => {
                    CloudError::Busy { env: env.name.clone(), message: error_chain(&e) }
                }
                SdkError::ServiceError(_) => CloudError::Credentials {
                    env: env.name.clone(),
                    message: error_chain(&e),
                    fix: "log in again (aws sso login / fresh keys) or set AWS_PROFILE".into(),
                },
                _ => CloudError::Unreachable {
                    env: env.name.clone(),
                    endpoint: endpoint.clone(),
                    message: error_chain(&e),
                    fix: ring_fix.clone(),
                },
            }
        })?;
        let found = identity.account().unwrap_or("unknown").to_string();
        if found != env.account_id {
            return Err(CloudError::WrongAccount { env: env.name.clone(), expected: env.account_id.clone(), found });
        }
        Ok(())
    }
}
