//! `database` (T2.3): a PostgreSQL database and login role on the RDS instance, with the
//! privileges the sprint plan grants.
//!
//! The endpoint comes from the RDS API, the admin login from where the environment says (an
//! SSM SecureString or an environment variable). The role's password is generated once and
//! kept in an SSM SecureString that terraform does not manage; a re-run never changes it. The
//! probe only reads; the verify after an apply logs in as the role and creates and drops a
//! table. The password reaches PostgreSQL as a SCRAM verifier, never as plain text.

use std::time::Duration;

use serde::Deserialize;
use tokio_postgres::Client;

use super::{Probe, Step, StepContext, StepError};
use crate::event::Outputs;
use crate::secret::Secret;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Params {
    /// RDS instance identifier, e.g. `arrakis-staging-postgres`.
    instance: String,
    /// Database to create.
    database: String,
    /// Login role to create.
    role: String,
    /// SSM SecureString that holds the role's password (created once, never rotated here).
    password_param: String,
    /// Where the admin password lives.
    admin_password: SecretSource,
    /// Admin login; default: the instance's master user name from the RDS API.
    #[serde(default)]
    admin_user: Option<String>,
    #[serde(default = "postgres")]
    admin_database: String,
    /// The CA bundle the server's certificate is checked against (RDS's global bundle; the
    /// ring's CA); empty: the system's roots. Connections are TLS only, the host name verified.
    #[serde(default)]
    ca_file: String,
}

fn postgres() -> String {
    "postgres".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "SecretSourceFile")]
pub(crate) enum SecretSource {
    /// An SSM SecureString, read with decryption.
    Ssm(String),
    /// An environment variable of the runbook process.
    Env(String),
}

/// A [`SecretSource`] as written: `{ ssm = "/name" }` or `{ env = "VARIABLE" }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretSourceFile {
    ssm: Option<String>,
    env: Option<String>,
}

impl TryFrom<SecretSourceFile> for SecretSource {
    type Error = String;

    fn try_from(file: SecretSourceFile) -> Result<Self, String> {
        match (file.ssm, file.env) {
            (Some(name), None) => Ok(SecretSource::Ssm(name)),
            (None, Some(var)) => Ok(SecretSource::Env(var)),
            _ => Err("give exactly one of `ssm = \"/parameter/name\"` or `env = \"VARIABLE\"`".into()),
        }
    }
}

/// The instance as the RDS API describes it.
struct Instance {
    host: String,
    port: u16,
    master_user: String,
}

/// What `survey` finds before a probe or an apply.
struct Survey {
    instance: Instance,
    admin_user: String,
    admin_password: Secret<String>,
    admin: Client,
    found: Found,
}

/// What the admin sees on the server.
struct Found {
    role: bool,
    database: bool,
    granted: bool,
}

impl Params {
    async fn instance(&self, cx: &StepContext) -> Result<Instance, StepError> {
        let db = match cx.cloud.rds.instance(&self.instance).await {
            Ok(Some(db)) => db,
            Ok(None) => {
                return Err(StepError::fatal(
                    format!("RDS returned no instance {}", self.instance),
                    "check the instance name",
                ));
            }
            Err(e) if e.code() == Some("DBInstanceNotFound") => {
                return Err(StepError::fatal(
                    format!("RDS instance {} not found in {} {}", self.instance, cx.env.account_id, cx.env.region),
                    format!("check the instance name in {}", cx.env.path.display()),
                ));
            }
            Err(e) => return Err(StepError::from_query("rds:DescribeDBInstances", e)),
        };
        let Some((host, port)) = db.endpoint else {
            return Err(StepError::retryable(format!(
                "RDS instance {} has no endpoint yet (status {})",
                self.instance,
                db.status.as_deref().unwrap_or("unknown")
            )));
        };
        Ok(Instance { host, port: port.unwrap_or(5432), master_user: db.master_username.unwrap_or_default() })
    }

    async fn admin_password(&self, cx: &StepContext) -> Result<Secret<String>, StepError> {
        match &self.admin_password {
            SecretSource::Env(var) => std::env::var(var).map(Secret::new).map_err(|_| {
                StepError::fatal(
                    format!("the admin password variable {var} is not set"),
                    format!("export {var} (the master password of {})", self.instance),
                )
            }),
            SecretSource::Ssm(name) => cx.parameter(name).await?.ok_or_else(|| {
                StepError::fatal(
                    format!("the admin password parameter {name} does not exist"),
                    format!("put the master password of {} there as a SecureString", self.instance),
                )
            }),
        }
    }

    async fn connect(
        &self,
        cx: &StepContext,
        instance: &Instance,
        user: &str,
        password: &Secret<String>,
        database: &str,
    ) -> Result<Client, StepError> {
        let addr = cx.env.dial(&instance.host, instance.port).map_err(|why| {
            StepError::fatal(format!("cannot dial {}:{}: {why}", instance.host, instance.port), "see [address_map]")
        })?;
        let mut config = tokio_postgres::Config::new();
        config
            .host(addr.ip().to_string())
            .port(addr.port())
            .user(user)
            .password(password.expose().as_bytes())
            .dbname(database)
            .application_name("runbook")
            .connect_timeout(std::time::Duration::from_secs(10));
        let ca = cx.project_file(&self.ca_file);
        let target = format!("{user}@{}:{}/{database} (dialled {addr})", instance.host, instance.port);
        let (client, connection) =
            crate::pg_tls::connect(config, &instance.host, ca.as_deref()).await.map_err(|text| {
                // A connection closed during the handshake is a server going away (shutting
                // down, failing over), not a certificate that does not match: try again.
                if crate::pg_tls::closed_in_handshake(&text) {
                    return StepError::retryable(format!("cannot connect to {target}: {text} (the server closed it)"));
                }
                if text.contains("TLS") || text.contains("certificate") || text.contains("CA file") {
                    return StepError::fatal(
                        format!("cannot connect to {target} over TLS: {text}"),
                        "check ca_file (the environment's pg_ca_file: RDS's global bundle, or the ring's CA) and that \
                     the server's certificate names its host",
                    );
                }
                // The server is starting, stopping or failing over (57P0x, 08xxx): try again.
                let refused =
                    ["password authentication failed", "does not exist", "permission denied", "not permitted"];
                if refused.iter().any(|r| text.contains(r)) {
                    StepError::fatal(
                        format!("PostgreSQL refused {target}: {text}"),
                        "check the password at the place the environment names, and that the role may log in",
                    )
                } else {
                    StepError::retryable(format!("cannot connect to {target}: {text}"))
                }
            })?;
        tokio::spawn(connection);
        Ok(client)
    }

    async fn found(&self, admin: &Client) -> Result<Found, StepError> {
        let one = |sql: &'static str, args: Vec<String>| async move {
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                args.iter().map(|a| a as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
            admin
                .query_one(sql, &params)
                .await
                .map(|row| row.get::<_, bool>(0))
                .map_err(|e| StepError::retryable(format!("query failed: {}", crate::error_chain::error_chain(&e))))
        };
        let role = one("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", vec![self.role.clone()]).await?;
        let database =
            one("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", vec![self.database.clone()]).await?;
        let granted = role
            && database
            && one(
                "SELECT has_database_privilege($1, $2, 'CREATE') AND has_database_privilege($1, $2, 'CONNECT') \
                 AND has_database_privilege($1, $2, 'TEMPORARY')",
                vec![self.role.clone(), self.database.clone()],
            )
            .await?;
        Ok(Found { role, database, granted })
    }

    fn outputs(&self, instance: &Instance) -> Outputs {
        Outputs::from([
            ("host".to_string(), instance.host.clone()),
            ("port".to_string(), instance.port.to_string()),
            ("database".to_string(), self.database.clone()),
            ("user".to_string(), self.role.clone()),
            ("password_param".to_string(), self.password_param.clone()),
        ])
    }

    /// The instance, an admin session on it, and what the admin sees.
    async fn survey(&self, cx: &StepContext) -> Result<Survey, StepError> {
        let instance = self.instance(cx).await?;
        let admin_user = self.admin_user.clone().unwrap_or_else(|| instance.master_user.clone());
        let admin_password = self.admin_password(cx).await?;
        let admin = self.connect(cx, &instance, &admin_user, &admin_password, &self.admin_database).await?;
        let found = self.found(&admin).await?;
        Ok(Survey { instance, admin_user, admin_password, admin, found })
    }

    /// Logs in as the role and creates and drops a table: the sprint plan's acceptance.
    async fn prove(&self, cx: &StepContext) -> Result<(), StepError> {
        let instance = self.instance(cx).await?;
        let password = cx
            .parameter(&self.password_param)
            .await?
            .ok_or_else(|| StepError::fatal(format!("SSM {} vanished", self.password_param), "run the step again"))?;
        let client = self.connect(cx, &instance, &self.role, &password, &self.database).await?;
        let table = format!("runbook_verify_{}", std::process::id());
        client.batch_execute(&format!("CREATE TABLE \"{table}\" (id int); DROP TABLE \"{table}\";")).await.map_err(
            |e| {
                StepError::fatal(
                    format!(
                        "role {} cannot create a table in {}: {}",
                        self.role,
                        self.database,
                        crate::error_chain::error_chain(&e)
                    ),
                    "check the grants on schema public",
                )
            },
        )?;
        cx.log(format!("verified: {} logged in to {} and created and dropped a table", self.role, self.database)).await;
        Ok(())
    }
}

impl Step for Params {
    const KIND: &'static str = "database";
    const OUTPUTS: Option<&'static [&'static str]> = Some(&["host", "port", "database", "user", "password_param"]);

    /// The database and role go into SQL as identifiers: plain ones only (checked whenever the
    /// step is typed, so before any run and before any SQL). The instance and the parameters are
    /// names RDS and SSM would refuse only after earlier steps acted.
    fn validate(&self) -> Result<(), String> {
        let instance = &self.instance;
        let instance_ok = (1..=63).contains(&instance.len())
            && instance.starts_with(|c: char| c.is_ascii_alphabetic())
            && instance.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !instance.ends_with('-')
            && !instance.contains("--");
        if !instance_ok {
            return Err(format!(
                "instance = {instance:?} is not an RDS instance identifier: 1-63 letters, digits and hyphens, starting \
                 with a letter (e.g. arrakis-staging-postgres)"
            ));
        }
        super::ssm_params::check_parameter_name("password_param", &self.password_param)?;
        if let SecretSource::Ssm(name) = &self.admin_password {
            super::ssm_params::check_parameter_name("admin_password.ssm", name)?;
        }
        for (what, name) in [("database", &self.database), ("role", &self.role)] {
            let ok = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
                && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && name.len() < 64;
            if !ok {
                return Err(format!(
                    "{what} = {name:?} is not a plain PostgreSQL identifier: use lower-case letters, digits and _ \
                     (starting with a letter or _), under 64 characters"
                ));
            }
        }
        Ok(())
    }

    async fn preflight(&self, cx: &StepContext) -> Result<(), StepError> {
        super::check_ca_file("ca_file", cx.project_file(&self.ca_file).as_deref())
    }

    fn converge_within(&self) -> Duration {
        Duration::from_secs(30)
    }

    /// The probe, then the proof that the result works (only after an apply).
    async fn verify(&self, cx: &StepContext) -> Result<Probe, StepError> {
        super::probe_then_prove(Step::probe(self, cx).await, || self.prove(cx)).await
    }

    async fn probe(&self, cx: &StepContext) -> Result<Probe, StepError> {
        let Survey { instance, found, .. } = self.survey(cx).await?;
        let password = cx.parameter(&self.password_param).await?;

        if found.role && password.is_none() {
            return Ok(Probe::Conflict(format!(
                "role {} exists but its password is not in SSM {}; runbook cannot know it. Put the \
                 password there as a SecureString, or drop the role if nothing uses it",
                self.role, self.password_param
            )));
        }
        let mut missing = Vec::new();
        if password.is_none() {
            missing.push(format!("generate the password of role {} into SSM {}", self.role, self.password_param));
        }
        if !found.role {
            missing.push(format!("create role {}", self.role));
        }
        if !found.database {
            missing.push(format!("create database {}", self.database));
        }
        if !found.granted {
            missing.push(format!("grant all on database {} and schema public to {}", self.database, self.role));
        }
        if !missing.is_empty() {
            return Ok(Probe::Absent(missing.join(", ")));
        }
        let password = password.expect("checked above");
        let role = match self.connect(cx, &instance, &self.role, &password, &self.database).await {
            Ok(client) => client,
            Err(StepError::Fatal { message, .. }) => {
                return Ok(Probe::Conflict(format!(
                    "role {} exists but the password in SSM {} does not log in ({message}); runbook \
                     never rotates it: set the role's password to the parameter's value, or the reverse",
                    self.role, self.password_param
                )));
            }
            Err(e) => return Err(e),
        };
        let can_create = role
            .query_one("SELECT has_schema_privilege(current_user, 'public', 'CREATE')", &[])
            .await
            .map(|row| row.get::<_, bool>(0))
            .map_err(|e| StepError::retryable(format!("query failed: {}", crate::error_chain::error_chain(&e))))?;
        if !can_create {
            return Ok(Probe::Absent(format!("grant all on schema public of {} to {}", self.database, self.role)));
        }
        Ok(Probe::Satisfied(self.outputs(&instance)))
    }

    async fn apply(&self, cx: &StepContext) -> Result<(), StepError> {
        let Survey { instance, admin_user, admin_password, admin, found } = self.survey(cx).await?;

        let password = match cx.parameter(&self.password_param).await? {
            Some(password) => password,
            None if found.role => {
                return Err(StepError::fatal(
                    format!("role {} exists but its password is not in SSM {}", self.role, self.password_param),
                    "put the role's password there as a SecureString, or drop the role",
                ));
            }
            None => create_password(cx, &self.password_param, &self.role).await?,
        };
        cx.checkpoint("after-password");

        let ddl = |sql: String| {
            let admin = &admin;
            async move {
                admin.batch_execute(&sql).await.map_err(|e| StepError::Fatal {
                    message: format!("SQL failed: {}", crate::error_chain::error_chain(&e)),
                    fix: None,
                })
            }
        };
        if !found.role {
            cx.log(format!(
                "CREATE ROLE {} LOGIN (password from SSM {}, sent as a SCRAM verifier)",
                self.role, self.password_param
            ))
            .await;
            let verifier = postgres_protocol::password::scram_sha_256(password.expose().as_bytes());
            ddl(format!("CREATE ROLE \"{}\" LOGIN PASSWORD '{verifier}'", self.role)).await?;
        }
        cx.checkpoint("after-role");
        if !found.database {
            cx.log(format!("CREATE DATABASE {}", self.database)).await;
            ddl(format!("CREATE DATABASE \"{}\"", self.database)).await?;
        }
        cx.log(format!("GRANT ALL PRIVILEGES ON DATABASE {} TO {}", self.database, self.role)).await;
        ddl(format!("GRANT ALL PRIVILEGES ON DATABASE \"{}\" TO \"{}\"", self.database, self.role)).await?;
        drop(admin);

        let in_db = self.connect(cx, &instance, &admin_user, &admin_password, &self.database).await?;
        cx.log(format!("GRANT ALL ON SCHEMA public TO {} (in {})", self.role, self.database)).await;
        in_db.batch_execute(&format!("GRANT ALL ON SCHEMA public TO \"{}\"", self.role)).await.map_err(|e| {
            StepError::Fatal { message: format!("SQL failed: {}", crate::error_chain::error_chain(&e)), fix: None }
        })?;
        Ok(())
    }
}

/// Generates 32 random bytes as hex into a new SecureString; if another writer got there
/// first, theirs is kept and used.
async fn create_password(cx: &StepContext, name: &str, role: &str) -> Result<Secret<String>, StepError> {
    let password = Secret::random_hex32();
    let put = cx
        .cloud
        .ssm
        .put_parameter()
        .name(name)
        .value(password.expose())
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .description(format!("Password of PostgreSQL role {role}; written once by runbook"))
        .overwrite(false)
        .send()
        .await;
    match put {
        Ok(_) => {
            cx.log(format!("generated the password of role {role} into SSM {name} (SecureString)")).await;
            Ok(password)
        }
        Err(e) if e.as_service_error().is_some_and(|s| s.is_parameter_already_exists()) => {
            cx.log(format!("SSM {name} appeared meanwhile; using it")).await;
            cx.parameter(name)
                .await?
                .ok_or_else(|| StepError::retryable(format!("SSM {name} exists but cannot be read")))
        }
        Err(e) => Err(StepError::from_sdk(&format!("ssm:PutParameter {name}"), e)),
    }
}
