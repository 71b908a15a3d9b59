//! What a native client of the fake needs, shared by the fake's tests and the benchmark
//! floor: requests carrying the metadata Modal's SDKs send, connections, the app and image
//! every create starts from.

use modal_proto as pb;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::ModalClientClient;

fn insert<T>(r: &mut Request<T>, key: &'static str, value: &str) {
    // A value that is not valid metadata is left out (the fake then refuses the call).
    if let Ok(v) = value.parse() {
        r.metadata_mut().insert(key, v);
    }
}

/// `msg` with the control plane's token metadata (`x-modal-token-id`, `-secret`) and the
/// Go SDK's client type.
pub fn with_token<T>(msg: T, id: &str, secret: &str) -> Request<T> {
    let mut r = Request::new(msg);
    insert(&mut r, "x-modal-token-id", id);
    insert(&mut r, "x-modal-token-secret", secret);
    insert(&mut r, "x-modal-client-type", "9");
    r
}

/// `msg` with a command router's `authorization: Bearer <jwt>`.
pub fn bearer<T>(msg: T, jwt: &str) -> Request<T> {
    let mut r = Request::new(msg);
    insert(&mut r, "authorization", &format!("Bearer {jwt}"));
    r
}

/// A plain-text (h2c) connection to `url`, without Nagle's delay.
pub async fn connect(url: &str) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(url.to_owned())?
        .tcp_nodelay(true)
        .connect()
        .await
}

/// `AppGetOrCreate` of the app `sandboxer` and `ImageGetOrCreate` of `FROM image`: the
/// (app id, image id) a create needs.
pub async fn app_and_image(
    c: &mut ModalClientClient<Channel>,
    id: &str,
    secret: &str,
    image: &str,
) -> Result<(String, String), Status> {
    let app = c
        .app_get_or_create(with_token(
            pb::AppGetOrCreateRequest {
                app_name: "sandboxer".into(),
                environment_name: String::new(),
                object_creation_type: pb::ObjectCreationType::CreateIfMissing as i32,
            },
            id,
            secret,
        ))
        .await?
        .into_inner()
        .app_id;
    let image = c
        .image_get_or_create(with_token(
            pb::ImageGetOrCreateRequest {
                image: Some(pb::Image {
                    dockerfile_commands: vec![format!("FROM {image}")],
                }),
                app_id: app.clone(),
                builder_version: String::new(),
            },
            id,
            secret,
        ))
        .await?
        .into_inner();
    Ok((app, image.image_id))
}
