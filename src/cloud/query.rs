//! AWS's query protocol, spoken directly for the few calls runbook makes to EC2, CloudWatch and
//! RDS: a form POST signed with SigV4 (AWS's own `aws-sigv4`), its XML answer read into a tree,
//! and the SDK's retry policy (three attempts, jittered backoff, on throttling, 5xx and lost
//! connections). Route53's two reads (a REST GET answered in XML) and CloudWatch Logs' one (a
//! JSON POST) go the same way. Their SDK crates cost more than all the rest: `aws-sdk-ec2` alone
//! took 3m09s of a 2-core build for five operations (docs/performance.md).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use aws_sdk_ssm::config::{Credentials, ProvideCredentials, SharedCredentialsProvider};

use crate::error_chain::error_chain;

/// Attempts per call, as the SDK's standard retry mode.
const ATTEMPTS: u32 = 3;

/// What the clients of one environment share: its region, its credentials and one HTTP client,
/// made at the first call (a command that calls none of these services builds none).
pub(crate) struct Shared {
    region: String,
    credentials: Option<SharedCredentialsProvider>,
    /// Credentials fetched once and kept until 5 minutes before they expire (a profile's
    /// `credential_process` or SSO is not asked again for every call, or for every service).
    cached: Mutex<Option<Credentials>>,
    http: OnceLock<reqwest::Client>,
}

impl Shared {
    pub(crate) fn new(config: &aws_config::SdkConfig) -> Arc<Self> {
        Arc::new(Shared {
            region: config.region().map(|r| r.to_string()).unwrap_or_default(),
            credentials: config.credentials_provider(),
            cached: Mutex::new(None),
            http: OnceLock::new(),
        })
    }

    fn http(&self) -> &reqwest::Client {
        self.http.get_or_init(|| {
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap_or_default()
        })
    }

    async fn credentials(&self) -> Result<Credentials, QueryError> {
        let fresh = |c: &Credentials| c.expiry().is_none_or(|at| at > SystemTime::now() + Duration::from_secs(300));
        if let Some(c) = self.cached.lock().unwrap().as_ref().filter(|c| fresh(c)) {
            return Ok(c.clone());
        }
        let provider = self.credentials.as_ref().ok_or_else(|| {
            QueryError::Construction("no AWS credentials: set AWS_PROFILE or the AWS_ACCESS_KEY_ID pair".into())
        })?;
        let found = provider
            .provide_credentials()
            .await
            .map_err(|e| QueryError::Construction(format!("no AWS credentials: {}", error_chain(&e))))?;
        *self.cached.lock().unwrap() = Some(found.clone());
        Ok(found)
    }
}

/// One AWS service's API in one region.
pub(crate) struct QueryClient {
    shared: Arc<Shared>,
    endpoint: String,
    region: String,
    /// SigV4's service name (`ec2`, `monitoring`).
    service: &'static str,
    /// The API version every request names.
    version: &'static str,
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum QueryError {
    /// AWS answered with an error.
    #[error("{code}: {message}")]
    Service { status: u16, code: String, message: String },
    /// No answer (connection, timeout), or one that is not AWS's.
    #[error("{0}")]
    Transport(String),
    /// The request could not be made (no credentials, no region).
    #[error("{0}")]
    Construction(String),
}

impl QueryError {
    /// AWS's error code, when AWS answered with one.
    pub(crate) fn code(&self) -> Option<&str> {
        match self {
            QueryError::Service { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Worth another attempt: throttling, AWS's own failures, no answer.
    fn transient(&self) -> bool {
        match self {
            QueryError::Service { status, code, .. } => *status >= 500 || super::transient_aws_code(code),
            QueryError::Transport(_) => true,
            QueryError::Construction(_) => false,
        }
    }
}

impl QueryClient {
    /// `prefix` is the service's endpoint prefix (`ec2`, `monitoring`); `endpoint` overrides
    /// `https://{prefix}.{region}.amazonaws.com` (the ring's moto, `AWS_ENDPOINT_URL`).
    pub(crate) fn new(
        shared: &Arc<Shared>,
        prefix: &'static str,
        version: &'static str,
        endpoint: Option<&str>,
    ) -> Self {
        let default = format!("https://{prefix}.{}.amazonaws.com", shared.region);
        Self::at(shared, prefix, version, endpoint.unwrap_or(&default), &shared.region)
    }

    /// A global service (Route53): one endpoint, signed for one region.
    pub(crate) fn global(
        shared: &Arc<Shared>,
        prefix: &'static str,
        version: &'static str,
        endpoint: Option<&str>,
        region: &str,
    ) -> Self {
        let default = format!("https://{prefix}.amazonaws.com");
        Self::at(shared, prefix, version, endpoint.unwrap_or(&default), region)
    }

    fn at(shared: &Arc<Shared>, prefix: &'static str, version: &'static str, endpoint: &str, region: &str) -> Self {
        QueryClient {
            shared: shared.clone(),
            endpoint: endpoint.trim_end_matches('/').to_string() + "/",
            region: region.to_string(),
            service: prefix,
            version,
        }
    }

    /// `action` with `params`, answered as an XML tree, after up to three attempts.
    pub(crate) async fn call(&self, action: &str, params: &[(String, String)]) -> Result<Element, QueryError> {
        let body = form(action, self.version, params);
        let request =
            Request { method: "POST", url: self.endpoint.clone(), content_type: Some(FORM), target: None, body };
        self.send(&request, answer).await
    }

    /// A REST GET of `path` with `query` (Route53's), answered as an XML tree.
    pub(crate) async fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Element, QueryError> {
        let mut url = format!("{}{}", self.endpoint.trim_end_matches('/'), path);
        for (i, (name, value)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&format!("{}={}", encode(name), encode(value)));
        }
        let request = Request { method: "GET", url, content_type: None, target: None, body: String::new() };
        self.send(&request, answer).await
    }

    /// A JSON POST of `body` to the operation `target` (CloudWatch Logs' `Logs_20140328.…`).
    pub(crate) async fn json(&self, target: &str, body: &serde_json::Value) -> Result<serde_json::Value, QueryError> {
        let request = Request {
            method: "POST",
            url: self.endpoint.clone(),
            content_type: Some("application/x-amz-json-1.1"),
            target: Some(target.to_string()),
            body: body.to_string(),
        };
        self.send(&request, answer_json).await
    }

    /// `request`, its answer read by `read`, after up to three attempts.
    async fn send<T>(&self, request: &Request, read: fn(u16, &str) -> Result<T, QueryError>) -> Result<T, QueryError> {
        let mut attempt = 1;
        loop {
            let answered = match self.once(request).await {
                Ok((status, text)) => read(status, &text),
                Err(e) => Err(e),
            };
            match answered {
                Err(e) if attempt < ATTEMPTS && e.transient() => {
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Every page of `action`: its answers, each asked with the previous one's `nextToken`.
    pub(crate) async fn pages(&self, action: &str, params: &[(String, String)]) -> Result<Vec<Element>, QueryError> {
        let mut pages = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut asked = params.to_vec();
            if let Some(token) = &token {
                asked.push(("NextToken".into(), token.clone()));
            }
            let page = self.call(action, &asked).await?;
            let result = page.result();
            token = next_token(action, result.text("nextToken").or(result.text("NextToken")), token.as_deref())?;
            pages.push(page);
            if token.is_none() {
                return Ok(pages);
            }
        }
    }

    /// One exchange: its status and body.
    async fn once(&self, request: &Request) -> Result<(u16, String), QueryError> {
        let mut headers: Vec<(String, String)> = Vec::new();
        if let Some(content_type) = request.content_type {
            headers.push(("content-type".into(), content_type.into()));
        }
        if let Some(target) = &request.target {
            headers.push(("x-amz-target".into(), target.clone()));
        }
        let signed = self.sign(request, &headers).await?;
        let method = if request.method == "GET" { reqwest::Method::GET } else { reqwest::Method::POST };
        let mut builder = self.shared.http().request(method, &request.url).body(request.body.clone());
        for (name, value) in headers.iter().chain(&signed) {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let response = builder.send().await.map_err(|e| QueryError::Transport(error_chain(&e)))?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| QueryError::Transport(error_chain(&e)))?;
        Ok((status, text))
    }

    /// The signature's headers for `request` with its own `headers`.
    async fn sign(&self, request: &Request, headers: &[(String, String)]) -> Result<Vec<(String, String)>, QueryError> {
        use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
        let unsigned = |e: &dyn std::fmt::Display| QueryError::Construction(format!("cannot sign the request: {e}"));
        let credentials = self.shared.credentials().await?;
        let identity = credentials.into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(self.service)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| unsigned(&e))?
            .into();
        let signable = SignableRequest::new(
            request.method,
            &request.url,
            headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
            SignableBody::Bytes(request.body.as_bytes()),
        )
        .map_err(|e| unsigned(&e))?;
        let (instructions, _) = sign(signable, &params).map_err(|e| unsigned(&e))?.into_parts();
        Ok(instructions.headers().map(|(n, v)| (n.to_string(), v.to_string())).collect())
    }
}

const FORM: &str = "application/x-www-form-urlencoded; charset=utf-8";

/// A request before it is signed.
struct Request {
    method: &'static str,
    url: String,
    content_type: Option<&'static str>,
    /// `x-amz-target`, for a JSON operation.
    target: Option<String>,
    body: String,
}

/// The next page's token from `next` as a page gave it (empty is none), after `asked`. As the
/// SDK's paginators: a page that names itself as the next would never end, so that is an error.
pub(crate) fn next_token(action: &str, next: Option<&str>, asked: Option<&str>) -> Result<Option<String>, QueryError> {
    let next = next.filter(|t| !t.is_empty());
    if next.is_some() && next == asked {
        return Err(QueryError::Transport(format!("{action} gave the same next token twice")));
    }
    Ok(next.map(String::from))
}

/// The SDK's standard backoff: a random share of 1 s, 2 s, … doubling, at most 20 s.
fn backoff(attempt: u32) -> Duration {
    let ceiling = 2f64.powi(attempt as i32 - 1).min(20.0);
    Duration::from_secs_f64(rand::random::<f64>() * ceiling)
}

/// The form body: `Action`, `Version`, then the parameters, each name and value percent-encoded.
pub(crate) fn form(action: &str, version: &str, params: &[(String, String)]) -> String {
    let mut out = format!("Action={}&Version={}", encode(action), encode(version));
    for (name, value) in params {
        out.push('&');
        out.push_str(&encode(name));
        out.push('=');
        out.push_str(&encode(value));
    }
    out
}

fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// An answer: its tree when the status is a success, else AWS's error in it
/// (`<Response><Errors><Error>` from EC2, `<ErrorResponse><Error>` from CloudWatch).
fn answer(status: u16, text: &str) -> Result<Element, QueryError> {
    let tree = Element::parse(text);
    if (200..300).contains(&status) {
        return tree.map_err(|e| QueryError::Transport(format!("HTTP {status} with an answer that is not XML: {e}")));
    }
    let error = tree.ok().and_then(|t| {
        let error = t.child("Errors").and_then(|e| e.child("Error")).or(t.child("Error"))?.clone();
        Some((error.text("Code")?.to_string(), error.text("Message").unwrap_or("no message").to_string()))
    });
    Err(refused(status, error))
}

/// A JSON answer (CloudWatch Logs'): its document when the status is a success, else AWS's
/// error in it (`__type`, which may carry a namespace before `#`, and `message`).
fn answer_json(status: u16, text: &str) -> Result<serde_json::Value, QueryError> {
    let doc: Result<serde_json::Value, _> = serde_json::from_str(text);
    if (200..300).contains(&status) {
        return doc.map_err(|e| QueryError::Transport(format!("HTTP {status} with an answer that is not JSON: {e}")));
    }
    let error = doc.ok().and_then(|d| {
        let code = d["__type"].as_str()?.rsplit('#').next()?.to_string();
        let message = d["message"].as_str().or(d["Message"].as_str()).unwrap_or("no message").to_string();
        Some((code, message))
    });
    Err(refused(status, error))
}

/// A refusal: AWS's error (code, message) when the answer carried one; a 5xx without it (a
/// proxy's, a load balancer's) is worth another attempt.
fn refused(status: u16, error: Option<(String, String)>) -> QueryError {
    match error {
        Some((code, message)) => QueryError::Service { status, code, message },
        None if status >= 500 => QueryError::Transport(format!("HTTP {status} without AWS's error")),
        None => {
            QueryError::Service { status, code: format!("HTTP{status}"), message: "no AWS error in the answer".into() }
        }
    }
}

/// An XML element: its local name, its text, its child elements. Attributes, comments and
/// namespaces are left out: AWS's query answers carry everything in elements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Element {
    pub(crate) name: String,
    pub(crate) text: String,
    pub(crate) children: Vec<Element>,
}

impl Element {
    /// The whole document, which must be well formed: one root (the tokenizer refuses a second
    /// one, or text outside it), every tag closed by its own name (a truncated answer is an
    /// error, never a shorter list).
    pub(crate) fn parse(xml: &str) -> Result<Element, String> {
        use xmlparser::{ElementEnd, Token};
        let mut open: Vec<Element> = Vec::new();
        let mut root = None;
        for token in xmlparser::Tokenizer::from(xml) {
            match token.map_err(|e| e.to_string())? {
                Token::ElementStart { local, .. } => {
                    open.push(Element { name: local.to_string(), ..Element::default() })
                }
                Token::ElementEnd { end: ElementEnd::Open, .. } => {}
                Token::ElementEnd { end, .. } => {
                    let done = open.pop().ok_or("a closing tag without its opening")?;
                    if let ElementEnd::Close(_, local) = end
                        && local.as_str() != done.name
                    {
                        return Err(format!("<{}> closed by </{}>", done.name, local.as_str()));
                    }
                    match open.last_mut() {
                        Some(parent) => parent.children.push(done),
                        None => root = Some(done),
                    }
                }
                Token::Text { text } => {
                    if let Some(element) = open.last_mut() {
                        element.text.push_str(&unescape(text.as_str())?)
                    }
                }
                Token::Cdata { text, .. } => {
                    open.last_mut().ok_or("CDATA outside the root element")?.text.push_str(text.as_str())
                }
                Token::Declaration { .. } | Token::Comment { .. } | Token::ProcessingInstruction { .. } => {}
                Token::Attribute { .. } => {}
                _ => return Err("a document type declaration".into()),
            }
        }
        match (open.last(), root) {
            (None, Some(root)) => Ok(root),
            (Some(element), _) => Err(format!("the answer ends inside <{}>", element.name)),
            (None, None) => Err("no element".into()),
        }
    }

    /// What an answer holds: `<ActionResult>` inside an awsQuery answer (CloudWatch's), the
    /// root itself in an EC2 answer.
    pub(crate) fn result(&self) -> &Element {
        self.children.iter().find(|c| c.name.ends_with("Result")).unwrap_or(self)
    }

    /// The first child named `name`.
    pub(crate) fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The text of the first child named `name`.
    pub(crate) fn text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.as_str())
    }

    /// The entries of the list `name`: its children, whatever they are called (`item` in EC2's
    /// answers, `member` in CloudWatch's, `DBInstance` in RDS's).
    pub(crate) fn list<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a Element> + 'a {
        self.child(name).into_iter().flat_map(|l| l.children.iter())
    }
}

/// XML's five entities and character references.
fn unescape(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let end = rest[at..].find(';').ok_or("an entity without its ';'")? + at;
        let entity = &rest[at + 1..end];
        let c = match entity {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = match entity.strip_prefix("#x").or(entity.strip_prefix("#X")) {
                    Some(hex) => u32::from_str_radix(hex, 16).ok(),
                    None => entity.strip_prefix('#').and_then(|d| d.parse().ok()),
                };
                code.and_then(char::from_u32).ok_or_else(|| format!("unknown entity &{entity};"))?
            }
        };
        out.push(c);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests;
