# Sourced by scripts/test, scripts/demo and scripts/build-images: makes sure a Docker engine
# answers and that the local job images exist, since no image registry can be reached.
#
#   _docker_ready               the engine, then both images where missing
#   _docker_ensure_engine       the engine only
#   _docker_build_images [1]    both images where missing; 1 rebuilds them
#
# An engine that answers is used as it is. Otherwise, as root: docker.io is installed with
# apt-get when dockerd is missing, the pid files an unclean stop left behind are removed, and
# dockerd is started without a bridge or iptables rules (job containers never get a network,
# and a container running this script cannot make a bridge). With systemd as PID 1 the
# docker service is started instead. DOCKER_HOST naming another engine is used, never started.
#
# Settings: CALCTRA_IMAGE_PREFIX (calctra-local), CALCTRA_DOCKERD_LOG
# (/var/log/calctra-dockerd.log), CALCTRA_DEBIAN_MIRROR (http://deb.debian.org/debian).

_docker_image_prefix="${CALCTRA_IMAGE_PREFIX:-calctra-local}"
_docker_busybox_image="$_docker_image_prefix/busybox:latest"
_docker_python_image="$_docker_image_prefix/python3:bookworm"
_docker_mirror="${CALCTRA_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
_dockerd_log="${CALCTRA_DOCKERD_LOG:-/var/log/calctra-dockerd.log}"
_dockerd_wait_s=30
_dockerd_args=(--bridge=none --iptables=false --ip-masq=false)
# Where dockerd keeps its pid file and, under docker/, its containerd's.
_docker_run_dir=/var/run
_docker_error=""
_dockerd_pid=""

_docker_fail() {
    echo "docker: $*" >&2
    exit 1
}

_docker_answers() {
    # Bounded, so that a hung engine counts as none; keeps the client's complaint for messages.
    if ! command -v docker >/dev/null 2>&1; then
        _docker_error="no docker command"
        return 1
    fi
    _docker_error="$(timeout 10 docker info 2>&1 >/dev/null)" && return 0
    _docker_error="$(printf '%s\n' "$_docker_error" | grep -v '^$' | tail -n 1)"
    _docker_error="${_docker_error:-no answer within 10 s}"
    return 1
}

_docker_host_is_local() {
    [[ -z ${DOCKER_HOST:-} || $DOCKER_HOST == unix:///var/run/docker.sock ||
        $DOCKER_HOST == unix:///run/docker.sock ]]
}

_docker_has_systemd() {
    [[ -d /run/systemd/system ]]
}

_docker_apt_install() {
    if [[ $EUID -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        _docker_fail "$* missing; install it (on Debian: apt-get install $*) or run this as root"
    fi
    echo "docker: installing $*"
    (
        # Without systemd the package would start dockerd with a bridge, which a container
        # cannot make; _docker_start starts it without one instead.
        if ! _docker_has_systemd && [[ ! -e /usr/sbin/policy-rc.d ]]; then
            trap 'rm -f /usr/sbin/policy-rc.d' EXIT
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
            chmod 755 /usr/sbin/policy-rc.d
        fi
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
    )
}

_docker_process_is() {
    # Whether process $1 is alive (not a zombie) and runs command $2; a pid file may name a
    # pid that the kernel has given to another process since.
    local pid="$1" stat
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$2" && ${stat##*) } != Z* ]]
}

_docker_pidfile_is() {
    [[ -f $1 ]] && _docker_process_is "$(tr -d '[:space:]' <"$1")" "$2"
}

_docker_clear_stale() {
    # dockerd refuses to start while its pid file names any live process, and reconnects to
    # the containerd its own pid file names; after an unclean stop both may be gone.
    local run_dir="$_docker_run_dir"
    local containerd_dir="$run_dir/docker/containerd" leftover=() path
    if [[ -e $run_dir/docker.pid ]] && ! _docker_pidfile_is "$run_dir/docker.pid" dockerd; then
        echo "docker: removing stale $run_dir/docker.pid"
        rm -f "$run_dir/docker.pid"
    fi
    if _docker_pidfile_is "$containerd_dir/containerd.pid" containerd; then
        return
    fi
    for path in "$containerd_dir"/containerd.pid "$containerd_dir"/containerd*.sock*; do
        [[ -e $path ]] && leftover+=("$path")
    done
    if ((${#leftover[@]})); then
        echo "docker: removing stale containerd files: ${leftover[*]}"
        rm -f "${leftover[@]}"
    fi
}

_docker_install_engine() {
    if command -v dockerd >/dev/null 2>&1 && command -v docker >/dev/null 2>&1; then
        return
    fi
    _docker_apt_install docker.io debootstrap busybox-static
}

_docker_start() {
    if _docker_has_systemd; then
        echo "docker: starting docker.service"
        systemctl start docker.service
        return
    fi
    _docker_clear_stale
    if _docker_pidfile_is "$_docker_run_dir/docker.pid" dockerd; then
        echo "docker: dockerd $(cat "$_docker_run_dir/docker.pid") is running;" \
            "waiting for it to answer"
        return
    fi
    echo "docker: starting dockerd without bridge or iptables, log $_dockerd_log"
    mkdir -p "$(dirname "$_dockerd_log")"
    # Its own session, so that Ctrl-C or the end of this script leaves the engine running.
    setsid nohup dockerd "${_dockerd_args[@]}" >>"$_dockerd_log" 2>&1 </dev/null &
    _dockerd_pid=$!
}

_docker_fail_with_log() {
    local where="$_dockerd_log"
    _docker_has_systemd && where="journalctl -u docker.service"
    if [[ -f $_dockerd_log ]] && ! _docker_has_systemd; then
        echo "docker: last lines of $_dockerd_log:" >&2
        tail -n 20 "$_dockerd_log" | sed 's/^/    /' >&2
    fi
    _docker_fail "$1; see $where"
}

_docker_wait() {
    local deadline=$((SECONDS + _dockerd_wait_s))
    until _docker_answers; do
        if [[ -n $_dockerd_pid ]] && ! _docker_process_is "$_dockerd_pid" dockerd; then
            _docker_fail_with_log "dockerd exited at start ($_docker_error)"
        fi
        if ((SECONDS >= deadline)); then
            _docker_fail_with_log "no engine answers ${_dockerd_wait_s} s after start"
        fi
        sleep 0.5
    done
}

_docker_ensure_engine() {
    if _docker_answers; then
        return
    fi
    if ! _docker_host_is_local; then
        _docker_fail "no engine answers at DOCKER_HOST=$DOCKER_HOST ($_docker_error);" \
            "start it there, or unset DOCKER_HOST to use a local one"
    fi
    if [[ $EUID -ne 0 && $_docker_error == *"permission denied"* ]]; then
        _docker_fail "the Docker engine refuses $(id -un) ($_docker_error); add $(id -un)" \
            "to the docker group, or run this as root"
    fi
    if [[ $EUID -ne 0 ]]; then
        _docker_fail "no Docker engine answers ($_docker_error); run this as root, which" \
            "installs and starts one, or start dockerd yourself"
    fi
    _docker_install_engine
    _docker_start
    _docker_wait
    echo "docker: engine up, version $(docker version --format '{{.Server.Version}}')"
}

_docker_find_busybox() {
    # A dynamically linked busybox would find no libc in an image that holds nothing else.
    local path
    for path in /bin/busybox /usr/bin/busybox; do
        if [[ -x $path ]] && ! ldd "$path" >/dev/null 2>&1; then
            _docker_busybox_bin="$path"
            return
        fi
    done
    _docker_apt_install busybox-static
    _docker_busybox_bin=/bin/busybox
}

_docker_busybox_root() {
    # busybox alone, with a link per applet and the directories a job expects.
    local root="$1" applet
    _docker_step="finding a static busybox"
    _docker_find_busybox
    _docker_step="copying $_docker_busybox_bin into the image's root"
    mkdir -p "$root"/{bin,dev,etc,proc,root,sys,tmp,usr}
    chmod 1777 "$root/tmp"
    ln -s bin "$root/sbin"
    ln -s ../bin "$root/usr/bin"
    ln -s ../bin "$root/usr/sbin"
    cp "$_docker_busybox_bin" "$root/bin/busybox"
    for applet in $("$root/bin/busybox" --list); do
        [[ $applet == busybox ]] || ln -s busybox "$root/bin/$applet"
    done
    printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' \
        'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' >"$root/etc/passwd"
    printf '%s\n' 'root:x:0:' 'nogroup:x:65534:' >"$root/etc/group"
}

_docker_python_root() {
    # Debian's python3, not python3-minimal: jobs need json, hashlib, tarfile and the like.
    local root="$1"
    command -v debootstrap >/dev/null 2>&1 || _docker_apt_install debootstrap
    _docker_step="debootstrap of bookworm from $_docker_mirror"
    debootstrap --variant=minbase --include=python3 bookworm "$root" "$_docker_mirror"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
}

_docker_remove_tree() {
    # debootstrap mounts /proc and /sys (and in some containers binds /dev) inside its
    # target; an interrupted run leaves them there, and rm must not descend into the host's.
    local root="$1" mount
    if [[ -z $root || ! -d $root ]]; then
        return
    fi
    awk -v root="$root/" 'index($2, root) == 1 { print $2 }' /proc/mounts | sort -r |
        while read -r mount; do umount -l "$mount" || true; done
    rm -rf --one-file-system "$root"
}

_docker_import() {
    # tag, directory: the directory's tree as an image.
    tar --numeric-owner --one-file-system -C "$2" -c . |
        docker import -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            -c 'WORKDIR /' - "$1" >/dev/null
}

_docker_check_image() {
    # tag, command...: the command must print "ok" in a container without a network.
    local tag="$1" out
    shift
    out="$(docker run --rm --network none "$tag" "$@" 2>/dev/null)" || true
    [[ $out == ok ]]
}

_docker_build_ended() {
    # The build's EXIT trap: says which step failed, with its output, and cleans up. A signal
    # can run it inside the step's redirection to the log, hence the saved stdout and stderr.
    local status="$1"
    exec 1>&3 2>&4
    if ((status == 130 || status == 143)); then
        echo "images: building $_docker_tag interrupted; $_docker_tag left as it was" >&2
    elif ((status != 0)) && [[ -n $_docker_step ]]; then
        if [[ -s $_docker_work/build.log ]]; then
            tail -n 20 "$_docker_work/build.log" | sed 's/^/    /' >&2
        fi
        echo "images: cannot build $_docker_tag: $_docker_step failed" >&2
    fi
    _docker_remove_tree "$_docker_work"
    docker image rm "$_docker_staging" >/dev/null 2>&1 || true
}

_docker_build_image() {
    # tag, function filling a root directory, what it does, check command...: builds under a
    # temporary tag, checks a container of it, then moves the real tag, so that a failed or
    # interrupted build never leaves a broken image under the tag jobs use.
    (
        _docker_tag="$1"
        _docker_staging="${1%:*}:building-$$"
        _docker_work=""
        _docker_step="making a work directory"
        local fill="$2" what="$3" old_id started=$SECONDS
        shift 3
        exec 3>&1 4>&2
        trap '_docker_build_ended $?' EXIT
        trap 'exit 130' INT
        trap 'exit 143' TERM
        _docker_work="$(mktemp -d /var/tmp/calctra-image.XXXXXX)"

        _docker_step="$what"
        echo "images: building $_docker_tag: $what"
        "$fill" "$_docker_work/root" >"$_docker_work/build.log" 2>&1
        rm "$_docker_work/build.log"

        _docker_step="docker import"
        _docker_import "$_docker_staging" "$_docker_work/root"

        _docker_step="the check, a container running: $*"
        _docker_check_image "$_docker_staging" "$@"

        _docker_step="docker tag"
        old_id="$(docker image inspect --format '{{.Id}}' "$_docker_tag" 2>/dev/null || true)"
        docker tag "$_docker_staging" "$_docker_tag"
        _docker_step=""
        # The image it replaces goes, unless a container or another tag still holds it.
        if [[ -n $old_id ]]; then
            docker image rm "$old_id" >/dev/null 2>&1 || true
        fi
        echo "images: built $_docker_tag in $((SECONDS - started)) s, size" \
            "$(docker image inspect --format '{{.Size}}' "$_docker_tag" | numfmt --to=iec)"
    )
}

_docker_build_images() {
    local force="${1:-0}"
    if [[ $force == 1 ]] || ! docker image inspect "$_docker_busybox_image" >/dev/null 2>&1; then
        _docker_build_image "$_docker_busybox_image" _docker_busybox_root \
            "a static busybox with its applet links" sh -c 'echo ok'
    fi
    if [[ $force == 1 ]] || ! docker image inspect "$_docker_python_image" >/dev/null 2>&1; then
        if [[ $EUID -ne 0 ]]; then
            _docker_fail "building $_docker_python_image runs debootstrap, which needs root;" \
                "run scripts/build-images as root"
        fi
        _docker_build_image "$_docker_python_image" _docker_python_root \
            "debootstrap --variant=minbase --include=python3 bookworm (about a minute)" \
            python3 -c 'import hashlib, json, os, tarfile; print("ok")'
    fi
}

_docker_ready() {
    _docker_ensure_engine
    _docker_build_images 0
}
