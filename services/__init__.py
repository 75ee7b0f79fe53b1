"""ModalMesh: a multimodal inference mesh over gRPC.

Installed as the package `modalmesh` (this folder is `services/` in the repository):

    modalmesh.v1       generated code for the contract in protos/modalmesh/v1
    modalmesh.common   the shared runtime every service is built on
    modalmesh.text     the text encoder service
    modalmesh.vision   the image encoder service
    modalmesh.audio    the audio encoder service and speech synthesis
    modalmesh.router   the router: gate, fusion, heads, public API
"""

__version__ = "0.1.0"
