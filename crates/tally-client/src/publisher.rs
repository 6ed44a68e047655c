//! The idempotent producer workers publish with.

use std::time::Duration;

use rdkafka::{
    error::{KafkaError, RDKafkaErrorCode},
    producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer},
};
use tally_events::{Codec, CodecError, Input};
use tally_service::kafka::ProducerSettings;

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The producer could not be created (bad config).
    #[error("cannot create the Kafka producer: {0}")]
    Create(#[source] KafkaError),
    /// The record could not be encoded.
    #[error("cannot encode the input: {0}")]
    Encode(#[from] CodecError),
    /// The broker did not acknowledge the record (after librdkafka's retries).
    #[error("delivery to {topic} failed: {source}")]
    Delivery {
        /// Topic.
        topic: String,
        /// Kafka's error.
        #[source]
        source: KafkaError,
    },
    /// Queued records were not delivered before the flush deadline.
    #[error("flush did not finish within {0:?}")]
    Flush(Duration),
    /// The alerts topic could not be followed (consumer, metadata).
    #[error("cannot follow the alerts topic: {0}")]
    Follow(#[source] KafkaError),
    /// A topic is missing, or the follower could not start.
    #[error("{0}")]
    Topic(String),
}

impl ClientError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ClientError::Delivery { .. } | ClientError::Flush(_) | ClientError::Follow(_))
    }
}

/// Producer settings. The defaults suit the local stack.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// `bootstrap.servers`.
    pub bootstrap_servers: String,
    /// Input topic.
    pub topic: String,
    /// How long the producer waits to batch records (`linger.ms`).
    pub linger: Duration,
    /// Records queued before [`Publisher::enqueue`] waits (backpressure).
    pub queue_max_messages: u32,
    /// How long a record may wait for delivery before it fails.
    pub delivery_timeout: Duration,
    /// Extra librdkafka properties (security settings and the like).
    pub overrides: Vec<(String, String)>,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        PublisherConfig {
            bootstrap_servers: "127.0.0.1:9092".into(),
            topic: tally_events::names::topics::INPUTS.into(),
            linger: Duration::from_millis(5),
            queue_max_messages: 100_000,
            delivery_timeout: Duration::from_secs(120),
            overrides: Vec::new(),
        }
    }
}

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// A record accepted into the producer queue; await [`PendingDelivery::wait`]
/// for the broker's acknowledgement.
pub struct PendingDelivery {
    future: DeliveryFuture,
    topic: String,
}

impl PendingDelivery {
    /// Waits for the acknowledgement.
    pub async fn wait(self) -> Result<Delivery, ClientError> {
        match self.future.await {
            Ok(Ok(delivery)) => Ok(Delivery { partition: delivery.partition, offset: delivery.offset }),
            Ok(Err((source, _message))) => Err(ClientError::Delivery { topic: self.topic, source }),
            Err(_canceled) => Err(ClientError::Delivery { topic: self.topic, source: KafkaError::Canceled }),
        }
    }
}

/// An idempotent producer of tally inputs.
pub struct Publisher {
    producer: FutureProducer,
    topic: String,
}

impl Publisher {
    /// Creates the producer (no network round trip yet).
    pub fn new(config: &PublisherConfig) -> Result<Self, ClientError> {
        let settings = ProducerSettings {
            linger: config.linger,
            delivery_timeout: config.delivery_timeout,
            queue_max_messages: config.queue_max_messages,
            ..ProducerSettings::new(&config.bootstrap_servers)
        };
        let mut client = settings.client_config();
        for (key, value) in &config.overrides {
            client.set(key, value);
        }
        let producer = client.create().map_err(ClientError::Create)?;
        Ok(Publisher { producer, topic: config.topic.clone() })
    }

    /// Publishes an input and waits until the broker has it.
    pub async fn send(&self, input: &Input) -> Result<Delivery, ClientError> {
        self.enqueue(input).await?.wait().await
    }

    /// Queues an input keyed by its account id. Waits while the queue is
    /// full, so a fast caller is slowed to what the broker takes.
    pub async fn enqueue(&self, input: &Input) -> Result<PendingDelivery, ClientError> {
        let payload = Codec::global().encode_input(input)?;
        self.enqueue_raw(input.account_id().as_bytes(), &payload).await
    }

    /// Queues raw bytes (for tools and tests that publish what a broken
    /// worker would).
    pub async fn enqueue_raw(&self, key: &[u8], payload: &[u8]) -> Result<PendingDelivery, ClientError> {
        let mut record = FutureRecord::to(&self.topic).key(key).payload(payload);
        loop {
            match self.producer.send_result(record) {
                Ok(future) => return Ok(PendingDelivery { future, topic: self.topic.clone() }),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    // Backpressure: librdkafka drains its queue in its own
                    // threads; give it a moment.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((source, _)) => return Err(ClientError::Delivery { topic: self.topic.clone(), source }),
            }
        }
    }

    /// Waits until every queued record is delivered (call on shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), ClientError> {
        self.producer.flush(timeout).map_err(|_| ClientError::Flush(timeout))
    }

    /// Records still queued or in flight.
    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }
}
