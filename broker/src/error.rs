//! Maps Chronik's typed errors to the Kafka error codes clients act on.
//! One place, so every handler answers the same failure the same way.

use kafka_protocol::error::ResponseError as E;

use crate::batch::BatchError;
use crate::catalog::TopicError;
use crate::configs::ConfigValueError;
use crate::home_role::RoleError;
use crate::log::{AppendError, ReadError, TruncateError};
use crate::producer::SequenceError;
use crate::storage::StoreError;

pub trait KafkaCode {
    fn kafka_code(&self) -> i16;
}

impl KafkaCode for StoreError {
    fn kafka_code(&self) -> i16 {
        E::KafkaStorageError.code()
    }
}

impl KafkaCode for BatchError {
    fn kafka_code(&self) -> i16 {
        match self {
            // Only a checksum failure is CORRUPT_MESSAGE in Kafka; framing
            // and count problems are INVALID_RECORD.
            BatchError::CrcMismatch { .. } => E::CorruptMessage.code(),
            BatchError::Corrupt | BatchError::UnsupportedMagic(_) | BatchError::Invalid(_) => {
                E::InvalidRecord.code()
            }
        }
    }
}

impl KafkaCode for AppendError {
    fn kafka_code(&self) -> i16 {
        match self {
            AppendError::Batch(b) => b.kafka_code(),
            AppendError::TooLarge { .. } => E::MessageTooLarge.code(),
            AppendError::Sequence(SequenceError::FencedEpoch { .. }) => {
                E::InvalidProducerEpoch.code()
            }
            AppendError::Sequence(SequenceError::OutOfOrder { .. }) => {
                E::OutOfOrderSequenceNumber.code()
            }
            AppendError::KeyRequired | AppendError::Undecodable(_) => E::InvalidRecord.code(),
            AppendError::Storage(s) => s.kafka_code(),
            AppendError::Deleted => E::UnknownTopicOrPartition.code(),
            AppendError::EpochRegressed { .. } => E::FencedLeaderEpoch.code(),
            // Retriable: the producer refreshes metadata and tries again
            // (the home is moving, or moved to another region).
            AppendError::Role(RoleError::NotHome { .. }) => E::NotLeaderOrFollower.code(),
            AppendError::Role(RoleError::IsHome { .. }) => E::PolicyViolation.code(),
            AppendError::Role(RoleError::StaleEpoch { .. }) => E::FencedLeaderEpoch.code(),
        }
    }
}

impl KafkaCode for ReadError {
    fn kafka_code(&self) -> i16 {
        match self {
            ReadError::OutOfRange { .. } => E::OffsetOutOfRange.code(),
            ReadError::Storage(s) => s.kafka_code(),
        }
    }
}

impl KafkaCode for TruncateError {
    fn kafka_code(&self) -> i16 {
        match self {
            TruncateError::OutOfRange { .. } => E::OffsetOutOfRange.code(),
            TruncateError::InsideBatch { .. } => E::InvalidRequest.code(),
            TruncateError::NotDemoted { .. } => E::PolicyViolation.code(),
            TruncateError::Storage(s) => s.kafka_code(),
        }
    }
}

impl KafkaCode for ConfigValueError {
    fn kafka_code(&self) -> i16 {
        E::InvalidConfig.code()
    }
}

impl KafkaCode for TopicError {
    fn kafka_code(&self) -> i16 {
        match self {
            TopicError::InvalidName(_) => E::InvalidTopicException.code(),
            TopicError::AlreadyExists(_) => E::TopicAlreadyExists.code(),
            TopicError::Unknown => E::UnknownTopicOrPartition.code(),
            TopicError::InvalidPartitions(_) => E::InvalidPartitions.code(),
            TopicError::InvalidReplicationFactor(_) => E::InvalidReplicationFactor.code(),
            TopicError::InvalidReplicaAssignment(_) => E::InvalidReplicaAssignment.code(),
            TopicError::InvalidConfig(c) => c.kafka_code(),
            TopicError::Storage(s) => s.kafka_code(),
            TopicError::Unavailable(_) => E::NotController.code(),
            TopicError::Rejected { code, .. } => *code,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_kafka() {
        assert_eq!(
            AppendError::Batch(BatchError::CrcMismatch {
                stored: 1,
                computed: 2
            })
            .kafka_code(),
            2
        );
        assert_eq!(
            AppendError::Batch(BatchError::Invalid("x")).kafka_code(),
            87
        );
        assert_eq!(AppendError::TooLarge { size: 2, max: 1 }.kafka_code(), 10);
        assert_eq!(
            AppendError::Sequence(SequenceError::OutOfOrder {
                expected: 1,
                got: 3,
                epoch: 0
            })
            .kafka_code(),
            45
        );
        assert_eq!(
            AppendError::Sequence(SequenceError::FencedEpoch { got: 1, current: 2 }).kafka_code(),
            47
        );
        assert_eq!(TopicError::InvalidName("x".into()).kafka_code(), 17);
        assert_eq!(TopicError::AlreadyExists("x".into()).kafka_code(), 36);
        assert_eq!(TopicError::Unknown.kafka_code(), 3);
        assert_eq!(TopicError::InvalidPartitions("x".into()).kafka_code(), 37);
        assert_eq!(
            TopicError::InvalidReplicationFactor("x".into()).kafka_code(),
            38
        );
        assert_eq!(
            TopicError::InvalidConfig(ConfigValueError::Unknown("x".into())).kafka_code(),
            40
        );
        assert_eq!(
            ReadError::OutOfRange {
                offset: 9,
                start: 0,
                end: 1
            }
            .kafka_code(),
            1
        );
        assert_eq!(StoreError::Rocks("x".into()).kafka_code(), 56);
    }
}
