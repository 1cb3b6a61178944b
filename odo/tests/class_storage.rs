//! A class keeps its kind of storage for the life of a data directory:
//! serving it with the other kind is a clear startup error.

use odo::{App, Context, DurableObject, ObjectError, OdoError, Request, Response, ServeOptions};

struct Nothing;

impl DurableObject for Nothing {
    fn create(_: &Context) -> Self {
        Nothing
    }

    async fn fetch(&mut self, _: &mut Context, _: Request) -> Result<Response, ObjectError> {
        Ok(Response::new(Default::default()))
    }
}

async fn serve_once(app: App, dir: &std::path::Path) -> Result<(), OdoError> {
    let options = ServeOptions {
        listen: "127.0.0.1:0".parse().expect("address"),
        workers: 0,
        data_dir: dir.to_path_buf(),
        storage: "memory".into(),
        ..ServeOptions::default()
    };
    // Serves, then stops at once.
    app.serve(options, async {}).await
}

#[tokio::test]
async fn reopening_a_class_with_the_other_kind_of_storage_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    serve_once(
        App::new()
            .sqlite_class::<Nothing>("notes", "NOTES")
            .class::<Nothing>("plain", "PLAIN"),
        dir.path(),
    )
    .await
    .expect("the first start records the kinds");
    // Same kinds, and a new class: fine.
    serve_once(
        App::new()
            .sqlite_class::<Nothing>("notes", "NOTES")
            .class::<Nothing>("more", "MORE"),
        dir.path(),
    )
    .await
    .expect("the same kinds start");
    let error = serve_once(App::new().class::<Nothing>("notes", "NOTES"), dir.path())
        .await
        .expect_err("NOTES is SQLite-backed in this directory");
    let message = error.to_string();
    assert!(
        message.contains("class NOTES") && message.contains("sqlite-backed"),
        "{message}"
    );
    let error = serve_once(
        App::new().sqlite_class::<Nothing>("plain", "PLAIN"),
        dir.path(),
    )
    .await
    .expect_err("PLAIN is key-value-backed in this directory");
    assert!(
        matches!(&error, OdoError::Registry(e) if e.to_string().contains("class PLAIN")),
        "{error}"
    );
}
