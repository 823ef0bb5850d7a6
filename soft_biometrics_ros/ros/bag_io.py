"""rosbag2 input and output for the bag tools, without rosbag2_py.

`ros2 bag` and `rosbag2_py` are often missing (they are not available as wheels), so
the bag tools (soft_biometrics_eval, soft_biometrics_replay, soft_biometrics_record_sample)
read and write rosbag2 directories with the pure-Python `rosbags` library, in the two
storage formats `ros2 bag record` writes (sqlite3 and mcap):

- `BagReader` opens a bag directory (or a lone .db3/.mcap file, e.g. of a recording
  that was killed before it wrote metadata.yaml), lists its image topics and yields
  the raw CDR bytes of its messages.
- `BagWriter` creates a bag; topics of our own types get their message definition and
  RIHS01 type hash from `typestore()` (the standard ROS 2 types plus soft_biometrics_msgs,
  parsed from its .msg files), so `ros2 bag play/info` and MCAP tools read them; copied
  topics keep the definition, hash and QoS they were recorded with.
- Messages travel as the real rclpy classes (`deserialize`/`serialize` wrap
  rclpy.serialization, the CDR that `ros2 bag` itself stores), and frames are decoded by
  `soft_biometrics_ros.ros.image_conversion`, the same code the node runs.

rosbag2 format versions: `Writer.VERSION_LATEST` (9, Jazzy and Kilted) by default;
version 8 writes the QoS as Humble's `ros2 bag` expects it (`--bag-version 8`).
"""

from __future__ import annotations

import functools
import importlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from rosbags.interfaces import (
    Connection, Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime)
from rosbags.rosbag2 import Reader, ReaderError, StoragePlugin, Writer, WriterError
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

IMAGE_MSGTYPE = 'sensor_msgs/msg/Image'
COMPRESSED_IMAGE_MSGTYPE = 'sensor_msgs/msg/CompressedImage'
IMAGE_MSGTYPES: Tuple[str, ...] = (IMAGE_MSGTYPE, COMPRESSED_IMAGE_MSGTYPE)
FACES_MSGTYPE = 'soft_biometrics_msgs/msg/FaceAttributesArray'
CLOCK_MSGTYPE = 'rosgraph_msgs/msg/Clock'
DEFAULT_FACES_TOPIC = '/soft_biometrics/faces'

STORAGE_PLUGINS: Dict[str, StoragePlugin] = {
    'sqlite3': StoragePlugin.SQLITE3,
    'mcap': StoragePlugin.MCAP,
}
STORAGE_FORMATS: Tuple[str, ...] = tuple(STORAGE_PLUGINS)
BAG_VERSIONS: Tuple[int, ...] = (8, 9)
DEFAULT_BAG_VERSION: int = Writer.VERSION_LATEST

# Standard ROS 2 types (sensor_msgs, std_msgs, rosgraph_msgs ...). Their definitions and
# RIHS01 hashes are the same from Humble to Kilted for every type the tools write.
TYPESTORE_DISTRO = Stores.ROS2_KILTED
MSG_PACKAGE = 'soft_biometrics_msgs'

# The QoS `ros2 bag record` stores for a default reliable publisher; durations of 0 are
# rmw's "unspecified" (no deadline, infinite lifespan), valid in every distro.
_ZERO = QosTime(0, 0)
RELIABLE_QOS = Qos(QosHistory.KEEP_LAST, 10, QosReliability.RELIABLE, QosDurability.VOLATILE,
                   _ZERO, _ZERO, QosLiveliness.AUTOMATIC, _ZERO, False)


class BagError(ValueError):
    """A bag cannot be read or written as asked; the message says what and why."""


class MessageDecodeError(BagError):
    """Stored bytes that do not decode as their recorded message type."""


def ns_to_stamp(nanoseconds: int) -> Tuple[int, int]:
    """Split nanoseconds since the epoch into a ROS stamp (sec, nanosec)."""
    return int(nanoseconds) // 1_000_000_000, int(nanoseconds) % 1_000_000_000


def stamp_to_ns(stamp) -> int:
    """Return a builtin_interfaces/Time-like object (sec, nanosec) in nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def format_stamp(nanoseconds: int) -> str:
    """Return nanoseconds as 'sec.nanosec' with the nanoseconds zero-padded to 9 digits."""
    sec, nanosec = ns_to_stamp(nanoseconds)
    return f'{sec}.{nanosec:09d}'


def msg_definition_dir(package: str = MSG_PACKAGE) -> Path:
    """Return the folder of `package`'s .msg files: the installed share, else the sources."""
    candidates: List[Path] = []
    try:
        from ament_index_python.packages import (
            PackageNotFoundError, get_package_share_directory)
        try:
            candidates.append(Path(get_package_share_directory(package)) / 'msg')
        except PackageNotFoundError:
            pass
    except ImportError:  # a plain Python environment without ament_index_python
        for prefix in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep):
            if prefix:
                candidates.append(Path(prefix) / 'share' / package / 'msg')
    candidates.append(Path(__file__).resolve().parents[2] / package / 'msg')
    for folder in candidates:
        if any(folder.glob('*.msg')):
            return folder
    raise BagError(
        f'cannot find the .msg files of {package} (looked in '
        f'{", ".join(str(c) for c in candidates)}); build and source the workspace')


@functools.lru_cache(maxsize=None)
def typestore():
    """Return a rosbags Typestore with the ROS 2 types and soft_biometrics_msgs registered."""
    store = get_typestore(TYPESTORE_DISTRO)
    types = {}
    for path in sorted(msg_definition_dir().glob('*.msg')):
        types.update(get_types_from_msg(path.read_text(), f'{MSG_PACKAGE}/msg/{path.stem}'))
    store.register(types)
    return store


def message_class(msgtype: str):
    """Return the rclpy message class of a type name such as 'sensor_msgs/msg/Image'."""
    parts = msgtype.split('/')
    if len(parts) != 3 or parts[1] != 'msg':
        raise BagError(f'message type {msgtype!r} is not of the form package/msg/Name')
    try:
        module = importlib.import_module(f'{parts[0]}.msg')
        return getattr(module, parts[2])
    except (ImportError, AttributeError):
        raise BagError(f'message type {msgtype} is not installed in this ROS environment '
                       f'(cannot import {parts[0]}.msg.{parts[2]})') from None


def deserialize(rawdata: bytes, msgtype: str):
    """Decode CDR bytes as stored in a bag into an rclpy message of type `msgtype`.

    Raises MessageDecodeError when the bytes are not a valid `msgtype` (e.g. truncated).
    """
    from rclpy.serialization import deserialize_message
    cls = message_class(msgtype)
    try:
        return deserialize_message(bytes(rawdata), cls)
    except RuntimeError as error:  # rclpy's RMWError: the CDR does not parse
        raise MessageDecodeError(
            f'{len(rawdata)} bytes are not a valid CDR-encoded {msgtype}: {error}') from None


def serialize(msg) -> bytes:
    """Encode an rclpy message into CDR bytes, as `ros2 bag record` stores it."""
    from rclpy.serialization import serialize_message
    return serialize_message(msg)


def header_stamp_ns(rawdata: bytes) -> Optional[int]:
    """Return the header stamp (ns) of CDR bytes of a message that starts with a Header.

    sensor_msgs Image and CompressedImage and FaceAttributesArray start with
    std_msgs/Header, whose stamp (int32 sec, uint32 nanosec) follows the 4-byte CDR
    encapsulation; reading it needs no full deserialization. None if too short.
    """
    if len(rawdata) < 12:
        return None
    little_endian = rawdata[1] & 1  # representation id 0x0001 CDR_LE, 0x0003 PL_CDR_LE
    sec, nanosec = struct.unpack('<iI' if little_endian else '>iI', bytes(rawdata[4:12]))
    return sec * 1_000_000_000 + nanosec


def decode_frame(msg):
    """Return a BGR uint8 frame from a sensor_msgs Image or CompressedImage message.

    Raises image_conversion.ImageConversionError (a ValueError) for bad frames.
    """
    from soft_biometrics_ros.ros import image_conversion
    if hasattr(msg, 'format') and not hasattr(msg, 'encoding'):
        return image_conversion.compressed_to_bgr(msg)
    return image_conversion.imgmsg_to_bgr(msg)


@dataclass
class BagMessage:
    """One stored message: its topic, type, log time (ns) and raw CDR bytes.

    `index` counts the messages of the topic from 0 in log-time order.
    """

    topic: str
    msgtype: str
    timestamp: int
    rawdata: bytes
    index: int
    connection: Connection


def _storage_file(path: Path) -> Path:
    """Pick what rosbags should open: the folder, or its only storage file."""
    if path.is_dir() and not (path / 'metadata.yaml').exists():
        files = sorted(list(path.glob('*.db3')) + list(path.glob('*.mcap')))
        if len(files) == 1:
            return files[0]
        if not files:
            raise BagError(f'{path} is not a rosbag2 bag: no metadata.yaml, .db3 or .mcap inside')
        raise BagError(f'{path} has no metadata.yaml and several storage files '
                       f'({", ".join(f.name for f in files)}); run `ros2 bag reindex` or '
                       'pass one file')
    return path


class BagReader:
    """Read a rosbag2 bag (sqlite3 or mcap), as a context manager.

    ```
    with BagReader('session_bag') as bag:
        topic = bag.choose_image_topic()
        for message in bag.messages([topic]):
            frame = decode_frame(deserialize(message.rawdata, message.msgtype))
    ```
    """

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f'bag {self.path} does not exist')
        self._reader = Reader(_storage_file(self.path))

    def __enter__(self) -> 'BagReader':
        try:
            self._reader.open()
        except (ReaderError, OSError) as err:
            raise BagError(f'cannot read bag {self.path}: {err}') from err
        return self

    def __exit__(self, *exc_info) -> None:
        self._reader.close()

    def _metadata(self) -> dict:
        meta = self.path / 'metadata.yaml'
        if not meta.exists():
            return {}
        from ruamel.yaml import YAML
        return YAML(typ='safe').load(meta.read_text()).get('rosbag2_bagfile_information', {})

    @property
    def storage(self) -> str:
        """Storage format: 'sqlite3' or 'mcap'."""
        identifier = self._metadata().get('storage_identifier')
        if identifier:
            return identifier
        return 'mcap' if _storage_file(self.path).suffix == '.mcap' else 'sqlite3'

    @property
    def version(self) -> Optional[int]:
        """rosbag2 format version from metadata.yaml (None for a bare storage file)."""
        version = self._metadata().get('version')
        return int(version) if version is not None else None

    @property
    def connections(self) -> List[Connection]:
        """Return the rosbags connections: topic, type, definition, hash and QoS."""
        return list(self._reader.connections)

    @property
    def topics(self) -> Dict[str, str]:
        """Map each topic to its message type."""
        return {c.topic: c.msgtype for c in self._reader.connections}

    def message_count(self, topic: str) -> int:
        """Return how many messages are stored on `topic`."""
        return sum(c.msgcount for c in self._reader.connections if c.topic == topic)

    @property
    def start_time(self) -> int:
        """Log time (ns) of the earliest message."""
        return self._reader.start_time

    def image_topics(self) -> Dict[str, str]:
        """Map each sensor_msgs Image or CompressedImage topic to its type."""
        return {t: m for t, m in self.topics.items() if m in IMAGE_MSGTYPES}

    def choose_image_topic(self, topic: Optional[str] = None) -> str:
        """Return `topic` after checking it holds images, or the bag's only image topic."""
        listing = ', '.join(f'{t} ({m})' for t, m in sorted(self.topics.items())) or 'none'
        images = self.image_topics()
        if topic:
            if topic not in self.topics:
                raise BagError(f'topic {topic} is not in bag {self.path}; its topics: {listing}')
            if topic not in images:
                raise BagError(f'topic {topic} of bag {self.path} holds {self.topics[topic]}, '
                               f'not {" or ".join(IMAGE_MSGTYPES)}')
            return topic
        if len(images) == 1:
            return next(iter(images))
        if not images:
            raise BagError(f'bag {self.path} has no {" or ".join(IMAGE_MSGTYPES)} topic; '
                           f'its topics: {listing}')
        raise BagError(f'bag {self.path} has several image topics ({", ".join(sorted(images))});'
                       ' choose one with --topic')

    def messages(self, topics: Optional[Sequence[str]] = None,
                 start: Optional[int] = None) -> Iterator[BagMessage]:
        """Yield the messages of `topics` (all when None) in log-time order.

        start: skip messages logged before this time (ns).
        """
        wanted = [c for c in self._reader.connections if topics is None or c.topic in topics]
        if not wanted:
            return
        counters: Dict[str, int] = {}
        for connection, timestamp, rawdata in self._reader.messages(wanted):
            index = counters.get(connection.topic, 0)
            counters[connection.topic] = index + 1
            if start is not None and timestamp < start:
                continue
            yield BagMessage(connection.topic, connection.msgtype, timestamp, rawdata, index,
                             connection)


class BagWriter:
    """Create a rosbag2 bag (sqlite3 or mcap) that `ros2 bag` and rosbags can read.

    ```
    with BagWriter('out_bag', storage='mcap') as bag:
        bag.add_topic('/soft_biometrics/faces', FACES_MSGTYPE)
        bag.write_message('/soft_biometrics/faces', timestamp_ns, faces_msg)
    ```
    """

    def __init__(self, path, storage: str = 'sqlite3', version: int = DEFAULT_BAG_VERSION):
        self.path = Path(path)
        if storage not in STORAGE_PLUGINS:
            raise BagError(f'storage must be one of {", ".join(STORAGE_FORMATS)}, '
                           f'got {storage!r}')
        if version not in BAG_VERSIONS:
            raise BagError(f'bag version must be one of {BAG_VERSIONS}, got {version!r}')
        if self.path.exists():
            raise BagError(f'{self.path} exists already; rosbag2 bags are never overwritten, '
                           'choose another path or remove it')
        self.storage = storage
        self.version = version
        self._writer = Writer(self.path, version=version, storage_plugin=STORAGE_PLUGINS[storage])
        self._connections: Dict[str, Connection] = {}

    def __enter__(self) -> 'BagWriter':
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._writer.open()
        except WriterError as err:
            raise BagError(f'cannot create bag {self.path}: {err}') from err
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        # Close properly even after an error so what was written stays readable.
        self._writer.close()

    @property
    def topics(self) -> Dict[str, str]:
        """Map each topic added so far to its message type."""
        return {t: c.msgtype for t, c in self._connections.items()}

    def add_topic(self, topic: str, msgtype: str, qos: Sequence[Qos] = (RELIABLE_QOS,)) -> None:
        """Add a topic of a type known to `typestore()` (definition and hash from it)."""
        if topic in self._connections:
            raise BagError(f'topic {topic} was added to {self.path} twice')
        try:
            self._connections[topic] = self._writer.add_connection(
                topic, msgtype, typestore=typestore(), offered_qos_profiles=list(qos))
        except KeyError:
            raise BagError(f'message type {msgtype} is unknown to the typestore') from None

    def copy_topic(self, connection: Connection) -> None:
        """Add a topic as another bag stores it: same type, definition, hash and QoS."""
        if connection.topic in self._connections:
            raise BagError(f'topic {connection.topic} was added to {self.path} twice')
        msgdef = connection.msgdef.data if connection.msgdef and connection.msgdef.data else None
        digest = connection.digest or None
        if msgdef is None or digest is None:  # e.g. a Humble bag: no definitions stored
            store = typestore()
            try:
                msgdef = msgdef or store.generate_msgdef(connection.msgtype, ros_version=2)[0]
                digest = digest or store.hash_rihs01(connection.msgtype)
            except KeyError:
                raise BagError(
                    f'topic {connection.topic}: the bag stores no type hash for '
                    f'{connection.msgtype} and the type is unknown here') from None
        self._connections[connection.topic] = self._writer.add_connection(
            connection.topic, connection.msgtype, msgdef=msgdef, rihs01=digest,
            offered_qos_profiles=list(connection.ext.offered_qos_profiles))

    def write(self, topic: str, timestamp: int, rawdata: bytes) -> None:
        """Write CDR bytes on `topic` (added before) at log time `timestamp` (ns)."""
        try:
            connection = self._connections[topic]
        except KeyError:
            raise BagError(f'topic {topic} was not added to {self.path} before writing') from None
        self._writer.write(connection, int(timestamp), rawdata)

    def write_message(self, topic: str, timestamp: int, msg) -> None:
        """Serialize an rclpy message and write it on `topic` at log time `timestamp` (ns)."""
        self.write(topic, timestamp, serialize(msg))


# ---- the command-line options the bag tools share (eval, replay, record_sample) ----

def add_input_bag_argument(parser, topic_help: str) -> None:
    """Add the positional `bag` and `--topic` (which image topic to read)."""
    parser.add_argument('bag', help='rosbag2 bag folder (or a .db3/.mcap file)')
    parser.add_argument('--topic', default=None, help=topic_help)


def add_output_bag_arguments(parser, what: str, storage_default: Optional[str] = None,
                             bag_version: bool = True, faces_topic: bool = True) -> None:
    """Add `--storage`, `--bag-version` and `--faces-topic` of the bag a tool writes.

    what: the bag, for the help texts ('the output bag'). storage_default: None = the
    input bag's storage. bag_version: add --bag-version (default: the input's era, or
    DEFAULT_BAG_VERSION for a new bag). faces_topic: add --faces-topic.
    """
    if faces_topic:
        parser.add_argument('--faces-topic', default=DEFAULT_FACES_TOPIC,
                            help=f'topic of the FaceAttributesArray answers in {what}')
    default_text = storage_default or "the input's"
    parser.add_argument('--storage', choices=STORAGE_FORMATS, default=storage_default,
                        help=f'rosbag2 storage of {what} (default: {default_text})')
    if bag_version:
        parser.add_argument('--bag-version', type=int, choices=BAG_VERSIONS,
                            default=None if storage_default is None else DEFAULT_BAG_VERSION,
                            help=f'rosbag2 metadata version of {what}: 9 for Jazzy/Kilted, 8 '
                                 "for Humble's ros2 bag (default: "
                                 + ('8 for Humble-era inputs, else 9)' if storage_default is None
                                    else f'{DEFAULT_BAG_VERSION})'))
