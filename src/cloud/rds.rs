//! The one RDS call runbook makes, over the query protocol: an instance's endpoint and master
//! user (T2.3). `aws-sdk-rds` took 75 CPU-seconds of a build for it.

use std::sync::Arc;

use super::query::{QueryClient, QueryError, Shared};

pub(crate) struct Rds(QueryClient);

/// An instance, as far as runbook reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DbInstance {
    pub(crate) status: Option<String>,
    /// Its endpoint's address and port; `None` while RDS makes it.
    pub(crate) endpoint: Option<(String, Option<u16>)>,
    pub(crate) master_username: Option<String>,
}

impl Rds {
    pub(crate) fn new(shared: &Arc<Shared>, endpoint: Option<&str>) -> Self {
        Rds(QueryClient::new(shared, "rds", "2014-10-31", endpoint))
    }

    /// `rds:DescribeDBInstances` of one instance; `DBInstanceNotFound` when there is none.
    pub(crate) async fn instance(&self, id: &str) -> Result<Option<DbInstance>, QueryError> {
        let answer = self.0.call("DescribeDBInstances", &[("DBInstanceIdentifier".into(), id.into())]).await?;
        let Some(db) = answer.result().list("DBInstances").next() else { return Ok(None) };
        let endpoint = match db.child("Endpoint") {
            Some(e) => {
                let port =
                    match e.text("Port") {
                        Some(p) => Some(p.trim().parse().map_err(|_| {
                            QueryError::Transport(format!("an answer that is not RDS's: Port = {p:?}"))
                        })?),
                        None => None,
                    };
                e.text("Address").map(|a| (a.to_string(), port))
            }
            None => None,
        };
        Ok(Some(DbInstance {
            status: db.text("DBInstanceStatus").map(String::from),
            endpoint,
            master_username: db.text("MasterUsername").map(String::from),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::query::Element;

    #[test]
    fn an_instance_is_read_from_its_dbinstance_entry() {
        let answer = Element::parse(
            "<DescribeDBInstancesResponse xmlns=\"http://rds.amazonaws.com/doc/2014-10-31/\"><DescribeDBInstancesResult>\
             <DBInstances><DBInstance><DBInstanceIdentifier>arrakis-staging-postgres</DBInstanceIdentifier>\
             <DBInstanceStatus>available</DBInstanceStatus><MasterUsername>arrakis_admin</MasterUsername>\
             <Endpoint><Address>a.rds.amazonaws.com</Address><Port>5432</Port></Endpoint></DBInstance></DBInstances>\
             </DescribeDBInstancesResult></DescribeDBInstancesResponse>",
        )
        .unwrap();
        let db = answer.result().list("DBInstances").next().unwrap();
        assert_eq!(db.text("MasterUsername"), Some("arrakis_admin"));
        assert_eq!(db.child("Endpoint").and_then(|e| e.text("Port")), Some("5432"));
    }
}
