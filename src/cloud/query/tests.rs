use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;

use super::*;
use crate::steps::StepError;

#[test]
fn an_answer_that_is_cut_short_or_not_well_formed_is_an_error_never_a_shorter_list() {
    let whole = "<R><securityGroupRuleSet><item><securityGroupRuleId>sgr-1</securityGroupRuleId></item>\
                 <item><securityGroupRuleId>sgr-2</securityGroupRuleId></item></securityGroupRuleSet></R>";
    assert_eq!(Element::parse(whole).unwrap().list("securityGroupRuleSet").count(), 2);
    for (bad, why) in [
        (&whole[..whole.len() - 4], "ends inside <R>"),
        (&whole[..60], "unexpected end of stream"),
        ("<R><a></b></R>", "<a> closed by </b>"),
        ("<R/><S/>", "unknown token"),
        ("", "no element"),
        ("text <R/>", "unknown token"),
        ("<R>&nbsp;</R>", "unknown entity &nbsp;"),
        ("<R>a & b</R>", ""),
        ("<!DOCTYPE R><R/>", ""),
    ] {
        let err = Element::parse(bad).expect_err(bad);
        assert!(err.contains(why), "{bad:?}: {err}");
    }
}

#[test]
fn text_is_unescaped_and_namespaces_comments_and_declarations_are_left_out() {
    let doc = Element::parse(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<a:R xmlns:a=\"x\"><!-- c --><d>&lt;b&gt; &amp; &quot;q&quot; &#65;&#x42;\
         </d><e><![CDATA[<raw>]]></e><f/></a:R>",
    )
    .unwrap();
    assert_eq!(doc.name, "R");
    assert_eq!(doc.text("d"), Some("<b> & \"q\" AB"));
    assert_eq!(doc.text("e"), Some("<raw>"));
    assert_eq!(doc.text("f"), Some(""));
    assert_eq!(doc.text("g"), None);
    assert_eq!(doc.result().name, "R", "an EC2 answer is its own result");
    let query = Element::parse("<XResponse><XResult><NextToken>t</NextToken></XResult></XResponse>").unwrap();
    assert_eq!(query.result().text("NextToken"), Some("t"));
}

#[test]
fn an_error_answer_gives_aws_code_and_a_5xx_without_it_is_worth_another_attempt() {
    let ec2 = "<Response><Errors><Error><Code>InvalidGroup.NotFound</Code><Message>The security group \
               'sg-1' does not exist</Message></Error></Errors><RequestID>r</RequestID></Response>";
    let err = answer(400, ec2).unwrap_err();
    assert_eq!(err.code(), Some("InvalidGroup.NotFound"));
    assert!(!err.transient());
    let cw = "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message>\
              </Error><RequestId>r</RequestId></ErrorResponse>";
    let err = answer(400, cw).unwrap_err();
    assert_eq!(err, QueryError::Service { status: 400, code: "Throttling".into(), message: "Rate exceeded".into() });
    assert!(err.transient(), "throttling is retried");
    assert!(
        answer(500, "<Response><Errors><Error><Code>Unavailable</Code></Error></Errors></Response>")
            .unwrap_err()
            .transient()
    );

    let gateway = answer(503, "<html>Service Unavailable</html>").unwrap_err();
    assert!(matches!(gateway, QueryError::Transport(_)) && gateway.transient(), "{gateway:?}");
    let refused = answer(403, "Forbidden").unwrap_err();
    assert_eq!(refused.code(), Some("HTTP403"));
    assert!(!refused.transient());
    let not_xml = answer(200, "<html><body>captive portal").unwrap_err();
    assert!(not_xml.to_string().contains("HTTP 200 with an answer that is not XML"), "{not_xml}");
    assert!(answer(200, "<DescribeVpcsResponse/>").is_ok());
}

#[test]
fn the_form_encodes_every_name_and_value() {
    let params = [("Filter.1.Value.1".to_string(), "a b/c=d&e+f~g".to_string())];
    assert_eq!(
        form("DescribeVpcs", "2016-11-15", &params),
        "Action=DescribeVpcs&Version=2016-11-15&Filter.1.Value.1=a%20b%2Fc%3Dd%26e%2Bf~g"
    );
    assert_eq!(encode("é"), "%C3%A9");
}

fn config() -> aws_config::SdkConfig {
    let credentials = Credentials::new("AKIDTEST", "secret-key-never-sent", None, None, "test");
    aws_config::SdkConfig::builder()
        .region(aws_config::Region::new("eu-west-3"))
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .behavior_version(aws_config::BehaviorVersion::latest())
        .build()
}

/// A server on loopback that answers each request with the next of `answers` (status, body),
/// and sends each request (head and body) it got.
fn server(answers: Vec<(u16, &'static str)>) -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (sent, got) = mpsc::channel();
    std::thread::spawn(move || {
        for (status, body) in answers {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
                head.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let mut request = vec![0; length];
            reader.read_exact(&mut request).unwrap();
            sent.send(head + &String::from_utf8(request).unwrap()).unwrap();
            let mut stream = stream;
            write!(stream, "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())
                .unwrap();
        }
    });
    (url, got)
}

#[tokio::test]
async fn a_call_is_signed_for_its_service_and_region_and_retried_after_throttling() {
    let throttled = "<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>slow down</Message></Error>\
                     </Errors></Response>";
    let vpcs = "<DescribeVpcsResponse><vpcSet><item><vpcId>vpc-1</vpcId><cidrBlock>10.0.0.0/16</cidrBlock></item>\
                </vpcSet></DescribeVpcsResponse>";
    let (url, got) = server(vec![(503, throttled), (200, vpcs)]);
    let client = QueryClient::new(&Shared::new(&config()), "ec2", "2016-11-15", Some(&url));
    let answer = client.call("DescribeVpcs", &[("VpcId.1".into(), "vpc-1".into())]).await.unwrap();
    assert_eq!(answer.list("vpcSet").next().and_then(|v| v.text("cidrBlock")), Some("10.0.0.0/16"));

    let (first, second) = (got.recv().unwrap(), got.recv().unwrap());
    for request in [&first, &second] {
        let lower = request.to_ascii_lowercase();
        assert!(request.starts_with("POST / HTTP/1.1"), "{request}");
        assert!(lower.contains("content-type: application/x-www-form-urlencoded"), "{request}");
        let auth = lower.lines().find(|l| l.starts_with("authorization:")).expect("signed");
        assert!(auth.contains("aws4-hmac-sha256 credential=akidtest/"), "{auth}");
        assert!(auth.contains("/eu-west-3/ec2/aws4_request"), "{auth}");
        assert!(auth.contains("signedheaders=content-type;host;x-amz-date"), "{auth}");
        assert!(!lower.contains("secret-key-never-sent"), "the secret key is never sent: {request}");
        assert!(request.ends_with("Action=DescribeVpcs&Version=2016-11-15&VpcId.1=vpc-1"), "{request}");
    }
}

#[tokio::test]
async fn a_refusal_is_not_retried_and_pages_follow_the_token() {
    let refused = "<Response><Errors><Error><Code>UnauthorizedOperation</Code><Message>no</Message></Error></Errors>\
                   </Response>";
    let (url, got) = server(vec![(403, refused)]);
    let client = QueryClient::new(&Shared::new(&config()), "ec2", "2016-11-15", Some(&url));
    let err = client.call("DescribeVpcs", &[]).await.unwrap_err();
    assert_eq!(err.code(), Some("UnauthorizedOperation"));
    got.recv().unwrap();
    assert!(got.recv_timeout(Duration::from_millis(300)).is_err(), "asked once");

    let page = |token: &str, id: &str| -> &'static str {
        format!("<R><vpcSet><item><vpcId>{id}</vpcId></item></vpcSet><nextToken>{token}</nextToken></R>").leak()
    };
    let (url, got) = server(vec![(200, page("t1", "vpc-1")), (200, page("", "vpc-2"))]);
    let client = QueryClient::new(&Shared::new(&config()), "ec2", "2016-11-15", Some(&url));
    let pages = client.pages("DescribeVpcs", &[]).await.unwrap();
    let ids: Vec<_> = pages.iter().flat_map(|p| p.list("vpcSet")).filter_map(|v| v.text("vpcId")).collect();
    assert_eq!(ids, ["vpc-1", "vpc-2"]);
    assert!(got.recv().unwrap().ends_with("Version=2016-11-15"));
    assert!(got.recv().unwrap().ends_with("Version=2016-11-15&NextToken=t1"));

    // A page that names itself as the next one would never end: an error, as in the SDK.
    let (url, _got) = server(vec![(200, page("t1", "vpc-1")), (200, page("t1", "vpc-1"))]);
    let client = QueryClient::new(&Shared::new(&config()), "ec2", "2016-11-15", Some(&url));
    let err = client.pages("DescribeVpcs", &[]).await.unwrap_err();
    assert!(err.to_string().contains("the same next token twice"), "{err}");
}

#[tokio::test]
async fn an_endpoint_that_does_not_answer_is_a_transport_error_after_three_attempts() {
    // A port nothing listens on: bound, then closed.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let client = QueryClient::new(
        &Shared::new(&config()),
        "monitoring",
        "2010-08-01",
        Some(&format!("http://127.0.0.1:{port}")),
    );
    let err = client.call("DescribeAlarms", &[]).await.unwrap_err();
    assert!(matches!(err, QueryError::Transport(_)), "{err:?}");
    assert!(StepError::from_query("cloudwatch:DescribeAlarms", err).to_string().contains("cloudwatch:DescribeAlarms"));
}

#[test]
fn a_json_answer_gives_its_error_type_without_its_namespace() {
    let missing = r#"{"__type":"com.amazonaws.logs#ResourceNotFoundException","message":"The specified log group does not exist."}"#;
    let err = answer_json(400, missing).unwrap_err();
    assert_eq!(err.code(), Some("ResourceNotFoundException"));
    assert!(!err.transient());
    assert!(answer_json(400, r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#).unwrap_err().transient());
    let not_json = answer_json(200, "<html>").unwrap_err();
    assert!(not_json.to_string().contains("not JSON"), "{not_json}");
    assert!(matches!(answer_json(502, "Bad Gateway").unwrap_err(), QueryError::Transport(_)));
    assert_eq!(answer_json(200, r#"{"events":[]}"#).unwrap()["events"], serde_json::json!([]));
}

#[tokio::test]
async fn a_rest_get_and_a_json_post_are_signed_with_what_they_send() {
    let zones = "<ListHostedZonesByNameResponse><HostedZones><HostedZone><Id>/hostedzone/Z1</Id>\
                 <Name>arrakis.community.</Name></HostedZone></HostedZones></ListHostedZonesByNameResponse>";
    let (url, got) = server(vec![(200, zones), (200, r#"{"events":[{"timestamp":5,"message":"ERROR x"}]}"#)]);
    let route53 = QueryClient::global(&Shared::new(&config()), "route53", "2013-04-01", Some(&url), "us-east-1");
    let answer = route53.get("/2013-04-01/hostedzonesbyname", &[("dnsname", "arrakis.community")]).await.unwrap();
    assert_eq!(answer.list("HostedZones").next().and_then(|z| z.text("Id")), Some("/hostedzone/Z1"));
    let request = got.recv().unwrap();
    assert!(request.starts_with("GET /2013-04-01/hostedzonesbyname?dnsname=arrakis.community HTTP/1.1"), "{request}");
    let auth = request.to_ascii_lowercase();
    assert!(auth.contains("/us-east-1/route53/aws4_request"), "a global service signs for us-east-1: {request}");

    let logs = QueryClient::new(&Shared::new(&config()), "logs", "", Some(&url));
    let page =
        logs.json("Logs_20140328.FilterLogEvents", &serde_json::json!({"logGroupName": "/ecs/d"})).await.unwrap();
    assert_eq!(page["events"][0]["message"], "ERROR x");
    let request = got.recv().unwrap().to_ascii_lowercase();
    assert!(request.contains("x-amz-target: logs_20140328.filterlogevents"), "{request}");
    assert!(request.contains("content-type: application/x-amz-json-1.1"), "{request}");
    assert!(request.contains("signedheaders=content-type;host;x-amz-date;x-amz-target"), "{request}");
    assert!(request.contains("/eu-west-3/logs/aws4_request"), "{request}");
    assert!(request.ends_with(r#"{"loggroupname":"/ecs/d"}"#), "{request}");
}

#[tokio::test]
async fn a_log_page_that_names_itself_as_the_next_is_an_error() {
    let page = r#"{"events":[{"timestamp":5,"message":"ERROR x"}],"nextToken":"t1"}"#;
    let (url, _got) = server(vec![(200, page), (200, page)]);
    let logs = crate::cloud::Logs::new(&Shared::new(&config()), Some(&url));
    let (events, next) = logs.filter("/ecs/d", 0, "ERROR", None).await.unwrap();
    assert_eq!((events.len(), next.as_deref()), (1, Some("t1")));
    let err = logs.filter("/ecs/d", 0, "ERROR", Some("t1")).await.unwrap_err();
    assert!(err.to_string().contains("the same next token twice"), "{err}");
}
