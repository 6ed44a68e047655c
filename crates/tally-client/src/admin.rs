//! Topic administration through the Kafka admin API, so the same call works
//! on Tansu, Apache Kafka, Redpanda or a managed service.

use std::time::Duration;

use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    error::{KafkaError, RDKafkaErrorCode},
    ClientConfig,
};

/// Why topics could not be created.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The admin client could not be created or reached the broker.
    #[error("kafka admin request to {bootstrap} failed: {source}")]
    Kafka {
        /// `bootstrap.servers`.
        bootstrap: String,
        /// Kafka's error.
        #[source]
        source: KafkaError,
    },
    /// The broker refused to create a topic.
    #[error("cannot create topic {topic}: {code}")]
    Refused {
        /// Topic.
        topic: String,
        /// Kafka's error code.
        code: RDKafkaErrorCode,
    },
}

/// Creates each `(name, partitions)` topic that does not exist yet.
pub async fn ensure_topics(bootstrap: &str, topics: &[(&str, i32)]) -> Result<(), AdminError> {
    let kafka = |source| AdminError::Kafka { bootstrap: bootstrap.to_string(), source };
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create().map_err(kafka)?;
    let new: Vec<NewTopic> =
        topics.iter().map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1))).collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(15)));
    let results = admin.create_topics(&new, &options).await.map_err(kafka)?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(AdminError::Refused { topic, code }),
        }
    }
    Ok(())
}
