import time, json, pathlib
from tests.fixtures_engines import llama_server, llama_server_bin, tiny_gguf, engine_dir, mlserver, tiny_sklearn
from tests.fixtures_gateway import gateways, models_for
__all__=["llama_server", "llama_server_bin", "tiny_gguf", "engine_dir", "gateways", "mlserver", "tiny_sklearn"]
def test_serve(gateways, llama_server, mlserver):
    gw = gateways.start(models=models_for(llama_server.url, llama_server.model, mlserver.url, mlserver.model))
    key = gw.new_key("dev")
    pathlib.Path("/tmp/gwdev/dev.json").write_text(json.dumps({"url": gw.url, "key": key, "llama": llama_server.url, "ml": mlserver.url, "log": str(gw.log_path), "mllog": str(mlserver.log), "config": str(gw.config_path)}))
    while pathlib.Path("/tmp/gwdev/dev.json").exists():
        time.sleep(1)
