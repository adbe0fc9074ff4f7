//! `chronik dev --secure`: the same deployment, locked down as production
//! should be. Each broker gets a SASL_SSL listener (SCRAM, the dev CA's
//! certificate) 20 ports above its Kafka port, ACLs with `User:admin` as
//! super user, mutual TLS between the brokers of a region, and its region's
//! admin API token. The PLAINTEXT listener stays on 127.0.0.1 for the
//! dc-link (which does not log in yet) and is trusted as `User:ANONYMOUS`.
//! The admin user's password and the client properties files that Kafka's
//! tools and librdkafka read are written next to dev.json.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chronik_topology::{
    Authorization, BrokerConfig, KafkaListener, ListenerTls, PeerTls, SecurityProtocol,
};
use chronik_wire::sasl::ScramHash;
use kafka_protocol::messages::alter_user_scram_credentials_request::ScramCredentialUpsertion;
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse, ApiKey,
};
use kafka_protocol::protocol::StrBytes;
use serde::Serialize;

/// The SCRAM user `--secure` creates, a super user.
pub const ADMIN_USER: &str = "admin";
/// The SASL_SSL listener sits this many ports above the broker's Kafka port.
pub const SASL_PORT_OFFSET: u16 = 20;
const ITERATIONS: u32 = 8192;

/// What dev.json tells clients of a secure deployment.
#[derive(Serialize)]
pub struct SecureJson {
    pub user: String,
    pub password_file: PathBuf,
    pub ca: PathBuf,
    /// For Kafka's tools (`--command-config`) and the Java client.
    pub java_properties: PathBuf,
    /// For librdkafka (`kcat -F`, confluent-kafka).
    pub librdkafka_properties: PathBuf,
}

fn random_hex(bytes: usize) -> Result<String, String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| format!("reading /dev/urandom: {e}"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Reads a secret file, or writes a fresh one (mode 0600) on first use, so
/// a restarted deployment keeps its password and tokens.
fn secret(path: &Path) -> Result<String, String> {
    if let Ok(s) = std::fs::read_to_string(path) {
        return Ok(s.trim().to_string());
    }
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let s = random_hex(16)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    writeln!(f, "{s}").map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(s)
}

/// The region's admin API token file (created on first use).
pub fn admin_token_file(root: &Path, region: &str) -> Result<PathBuf, String> {
    let path = root.join(region).join("admin-token");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    secret(&path)?;
    Ok(path)
}

/// Adds the SASL_SSL listener, ACLs, peer TLS and the admin token to a
/// broker's new config; its certificate is issued here.
pub fn harden(
    cfg: &mut BrokerConfig,
    root: &Path,
    certs: &Path,
    regions: &[&str],
) -> Result<(), String> {
    let id = cfg.node_id;
    let name = format!("broker-{id}");
    let hosts = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        chronik_topology::raft_peer_dns_name(&cfg.region, id),
    ];
    chronik_dc_link::tls::issue_dev_cert(
        certs,
        &name,
        chronik_dc_link::tls::DevCertKind::Broker,
        &hosts,
    )
    .map_err(|e| e.to_string())?;
    let (cert, key) = (
        certs.join(format!("{name}.pem")),
        certs.join(format!("{name}.key")),
    );
    let mut sasl = cfg.listeners.kafka;
    sasl.set_port(
        sasl.port()
            .checked_add(SASL_PORT_OFFSET)
            .ok_or("the SASL_SSL port is out of range")?,
    );
    cfg.listeners.extra.push(KafkaListener {
        name: "SASL_SSL".into(),
        address: sasl,
        advertised: None,
        security: SecurityProtocol::SaslSsl,
        tls: Some(ListenerTls {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: None,
            client_auth: Default::default(),
            reload_check_ms: 5_000,
        }),
    });
    cfg.listeners.admin_token_file = Some(admin_token_file(root, &cfg.region)?);
    cfg.authorization = Authorization {
        enabled: true,
        super_users: [
            format!("User:{ADMIN_USER}"),
            // The PLAINTEXT listener, on 127.0.0.1: the dc-link's way in.
            "User:ANONYMOUS".into(),
        ]
        .into_iter()
        // Produces forwarded from another region are checked as it too.
        .chain(regions.iter().map(|r| format!("User:region:{r}")))
        .collect(),
        allow_everyone_if_no_acl_found: false,
    };
    if !cfg.cluster.peers.is_empty() {
        cfg.cluster.tls = Some(PeerTls {
            cert,
            key,
            ca: certs.join("ca.pem"),
        });
    }
    Ok(())
}

/// Creates (or resets) the admin user's SCRAM credential on a broker's
/// PLAINTEXT listener, retrying while the region settles.
pub async fn create_admin(bootstrap: &str, password: &str) -> Result<(), String> {
    let salt = random_hex(16)?.into_bytes();
    let hash = ScramHash::Sha512;
    let req = AlterUserScramCredentialsRequest::default().with_upsertions(vec![
        ScramCredentialUpsertion::default()
            .with_name(StrBytes::from_static_str(ADMIN_USER))
            .with_mechanism(hash.type_id())
            .with_iterations(ITERATIONS as i32)
            .with_salt(salt.clone().into())
            .with_salted_password(
                hash.salted_password(password.as_bytes(), &salt, ITERATIONS)
                    .into(),
            ),
    ]);
    let mut last = String::from("no attempt");
    for _ in 0..30 {
        let pipe = chronik_wire::client::Pipe::open(bootstrap.to_string(), "chronik-dev");
        let answer = pipe.call(ApiKey::AlterUserScramCredentials, 0, &req).await;
        match answer {
            Ok(Ok(body)) => {
                let resp: AlterUserScramCredentialsResponse = chronik_wire::client::Pipe::decode(
                    bootstrap,
                    ApiKey::AlterUserScramCredentials,
                    0,
                    body,
                )
                .map_err(|e| e.to_string())?;
                match resp.results.iter().find(|r| r.error_code != 0) {
                    None => return Ok(()),
                    Some(r) => {
                        last = format!(
                            "error {}: {}",
                            r.error_code,
                            r.error_message.as_deref().unwrap_or("")
                        )
                    }
                }
            }
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "the connection closed".into(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!(
        "creating the SCRAM user {ADMIN_USER} at {bootstrap}: {last}"
    ))
}

/// The admin password (created on first use) and the properties files.
pub fn client_files(root: &Path, certs: &Path) -> Result<(String, SecureJson), String> {
    let password_file = root.join("admin.password");
    let password = secret(&password_file)?;
    let ca = certs.join("ca.pem");
    let java = root.join("admin-java.properties");
    let rdkafka = root.join("admin-librdkafka.properties");
    let write = |path: &Path, text: String| {
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
    };
    write(
        &java,
        format!(
            "security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\n\
             sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required \
             username=\"{ADMIN_USER}\" password=\"{password}\";\n\
             ssl.truststore.type=PEM\nssl.truststore.location={}\n",
            ca.display()
        ),
    )?;
    write(
        &rdkafka,
        format!(
            "security.protocol=SASL_SSL\nsasl.mechanisms=SCRAM-SHA-512\n\
             sasl.username={ADMIN_USER}\nsasl.password={password}\nssl.ca.location={}\n",
            ca.display()
        ),
    )?;
    Ok((
        password,
        SecureJson {
            user: ADMIN_USER.into(),
            password_file,
            ca,
            java_properties: java,
            librdkafka_properties: rdkafka,
        },
    ))
}
