/* peers-feed DEV WxH FPS FRAME.jpg... - an MJPEG "camera" for scripts/vm-peers.sh.
 *
 * Sets the output format of a v4l2loopback device to MJPG WxH at FPS and writes the given JPEG
 * files to it in a loop, one per frame period on an absolute clock (so the rate does not drift
 * with the write time, as a `dd` per frame does). All frames are read into memory first: the
 * loop costs one write(2) per frame. Runs until killed. Built static on the host (gcc -static)
 * and copied into the VM; not part of the test suite.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/videodev2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s DEV WxH FPS FRAME.jpg...\n", argv[0]);
        return 2;
    }
    unsigned w, h, fps = (unsigned)atoi(argv[3]);
    if (sscanf(argv[2], "%ux%u", &w, &h) != 2 || fps == 0) {
        fprintf(stderr, "peers-feed: bad size or rate\n");
        return 2;
    }
    int n = argc - 4;
    char **buf = calloc(n, sizeof *buf);
    size_t *len = calloc(n, sizeof *len), max = 0;
    for (int i = 0; i < n; i++) {
        FILE *f = fopen(argv[4 + i], "rb");
        struct stat st;
        if (!f || fstat(fileno(f), &st) != 0) {
            perror(argv[4 + i]);
            return 1;
        }
        len[i] = (size_t)st.st_size;
        buf[i] = malloc(len[i]);
        if (fread(buf[i], 1, len[i], f) != len[i]) {
            perror(argv[4 + i]);
            return 1;
        }
        fclose(f);
        if (len[i] > max) max = len[i];
    }
    int fd = open(argv[1], O_RDWR);
    if (fd < 0) {
        perror(argv[1]);
        return 1;
    }
    struct v4l2_format fmt;
    memset(&fmt, 0, sizeof fmt);
    fmt.type = V4L2_BUF_TYPE_VIDEO_OUTPUT;
    ioctl(fd, VIDIOC_G_FMT, &fmt);
    fmt.fmt.pix.width = w;
    fmt.fmt.pix.height = h;
    fmt.fmt.pix.pixelformat = V4L2_PIX_FMT_MJPEG;
    fmt.fmt.pix.field = V4L2_FIELD_NONE;
    fmt.fmt.pix.bytesperline = 0;
    fmt.fmt.pix.sizeimage = (unsigned)(max * 2 > w * h * 2 ? max * 2 : w * h * 2);
    if (ioctl(fd, VIDIOC_S_FMT, &fmt) != 0) {
        perror("VIDIOC_S_FMT");
        return 1;
    }
    struct v4l2_streamparm parm;
    memset(&parm, 0, sizeof parm);
    parm.type = V4L2_BUF_TYPE_VIDEO_OUTPUT;
    parm.parm.output.timeperframe.numerator = 1;
    parm.parm.output.timeperframe.denominator = fps;
    if (ioctl(fd, VIDIOC_S_PARM, &parm) != 0) perror("VIDIOC_S_PARM (ignored)");
    printf("peers-feed: %s MJPEG %ux%u @%u, %d frames, largest %zu bytes\n", argv[1], w, h, fps, n,
           max);
    fflush(stdout);
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    long period = 1000000000L / fps;
    for (unsigned long k = 0;; k++) {
        int i = (int)(k % (unsigned long)n);
        if (write(fd, buf[i], len[i]) < 0 && errno != EAGAIN) {
            perror("write");
            return 1;
        }
        next.tv_nsec += period;
        while (next.tv_nsec >= 1000000000L) {
            next.tv_nsec -= 1000000000L;
            next.tv_sec++;
        }
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR) {
        }
    }
}
