//! KServe ModelMesh's model-runtime service (`mmesh.ModelRuntime`), so `serve` can be
//! a custom `ServingRuntime`: ModelMesh's puller fetches a model to a local path and
//! asks the runtime to load it by id; inference then arrives on the v2 gRPC service
//! with the id as the model name.

use tonic::{Request, Response, Status};

use crate::infer::Infer;
use crate::protocol::grpc::pb::mmesh;
use crate::protocol::grpc::pb::mmesh::model_runtime_server::{ModelRuntime, ModelRuntimeServer};

/// The model-runtime service.
#[derive(Clone)]
pub struct ModelMeshService {
    infer: Infer,
    capacity_bytes: u64,
}

impl ModelMeshService {
    pub fn new(infer: Infer, capacity_bytes: u64) -> ModelMeshService {
        ModelMeshService {
            infer,
            capacity_bytes,
        }
    }

    pub fn server(self) -> ModelRuntimeServer<ModelMeshService> {
        ModelRuntimeServer::new(self)
    }
}

/// A conservative size for a model before it is loaded: the file sizes on disk times
/// two (weights plus ONNX Runtime's working memory).
fn predicted_size(path: &std::path::Path) -> u64 {
    fn walk(path: &std::path::Path, depth: usize) -> u64 {
        if path.is_file() {
            return std::fs::metadata(path).map_or(0, |m| m.len());
        }
        if depth > 4 {
            return 0;
        }
        std::fs::read_dir(path).map_or(0, |entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| walk(&entry.path(), depth + 1))
                .sum()
        })
    }
    walk(path, 0).saturating_mul(2)
}

#[tonic::async_trait]
impl ModelRuntime for ModelMeshService {
    async fn load_model(
        &self,
        request: Request<mmesh::LoadModelRequest>,
    ) -> Result<Response<mmesh::LoadModelResponse>, Status> {
        let request = request.into_inner();
        if request.model_id.is_empty() || request.model_path.is_empty() {
            return Err(Status::invalid_argument(
                "modelId and modelPath are required",
            ));
        }
        let path = std::path::PathBuf::from(&request.model_path);
        tracing::info!(model = %request.model_id, path = %path.display(), "modelmesh load");
        let size = self
            .infer
            .load_path(&request.model_id, &path)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(mmesh::LoadModelResponse {
            size_in_bytes: size.saturating_mul(2),
            max_concurrency: 0,
        }))
    }

    async fn unload_model(
        &self,
        request: Request<mmesh::UnloadModelRequest>,
    ) -> Result<Response<mmesh::UnloadModelResponse>, Status> {
        // Unloading what is not loaded succeeds, as the service's contract asks.
        let _ = self.infer.unload(&request.into_inner().model_id);
        Ok(Response::new(mmesh::UnloadModelResponse {}))
    }

    async fn predict_model_size(
        &self,
        request: Request<mmesh::PredictModelSizeRequest>,
    ) -> Result<Response<mmesh::PredictModelSizeResponse>, Status> {
        let request = request.into_inner();
        Ok(Response::new(mmesh::PredictModelSizeResponse {
            size_in_bytes: predicted_size(std::path::Path::new(&request.model_path)),
        }))
    }

    async fn model_size(
        &self,
        request: Request<mmesh::ModelSizeRequest>,
    ) -> Result<Response<mmesh::ModelSizeResponse>, Status> {
        let model = self
            .infer
            .model(&request.into_inner().model_id, None)
            .map_err(Status::from)?;
        Ok(Response::new(mmesh::ModelSizeResponse {
            size_in_bytes: model.size_bytes.saturating_mul(2),
        }))
    }

    async fn runtime_status(
        &self,
        _: Request<mmesh::RuntimeStatusRequest>,
    ) -> Result<Response<mmesh::RuntimeStatusResponse>, Status> {
        // Called at ModelMesh start-up: purge models it loaded before a restart.
        for name in self.infer.model_names() {
            if self.infer.loaded_from_path(&name) {
                let _ = self.infer.unload(&name);
            }
        }
        let mut method_infos = std::collections::HashMap::new();
        for method in ["ModelInfer", "ModelMetadata", "ModelStreamInfer"] {
            method_infos.insert(
                format!("inference.GRPCInferenceService/{method}"),
                // Field 1 of ModelInferRequest / ModelMetadataRequest is the model name.
                mmesh::runtime_status_response::MethodInfo {
                    id_injection_path: vec![1],
                },
            );
        }
        Ok(Response::new(mmesh::RuntimeStatusResponse {
            status: mmesh::runtime_status_response::Status::Ready as i32,
            capacity_in_bytes: self.capacity_bytes,
            max_loading_concurrency: 1,
            model_loading_timeout_ms: 90_000,
            default_model_size_in_bytes: 64 << 20,
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            numeric_runtime_version: 0,
            method_infos,
            limit_model_concurrency: false,
            allow_any_method: false,
        }))
    }
}
